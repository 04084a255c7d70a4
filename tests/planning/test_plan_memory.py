"""Planning with a memory predictor: candidates read the episode's memory and never write it; MPC writes the real
frames that leave the context, once each; the memory rides in the plan state (and its bytes)."""

from __future__ import annotations

import pytest
import torch

from dinowm_core import load_config
from dinowm_core.models.build import build_world_model
from dinowm_core.planning.planner import PlanState, make_planner
from dinowm_core.presets import list_presets
from tests.conftest import TINY

SMALL = ["predictor.depth=2", "predictor.heads=2", "predictor.dim_head=8", "predictor.mlp_dim=32",
         "predictor.memory.capacity=8", "planner=mpc_cem", "planner.horizon=2", "planner.mpc.n_taken_actions=1",
         "planner.cem.num_samples=6", "planner.cem.topk=2", "planner.cem.opt_steps=2"]  # fmt: skip


def _setup(preset: str = "lookup_mem_vit"):
    cfg = load_config([*TINY, f"predictor={preset}", *SMALL])
    torch.manual_seed(0)
    wm = build_world_model(cfg).eval()
    planner = make_planner(cfg.planner, wm)
    g = torch.Generator().manual_seed(1)
    obs = {
        "visual": torch.rand(2, 3, 3, 64, 64, generator=g) * 2 - 1,
        "proprio": torch.randn(2, 3, 2, generator=g),
    }
    goal = {
        "visual": torch.rand(2, 1, 3, 64, 64, generator=g) * 2 - 1,
        "proprio": torch.randn(2, 1, 2, generator=g),
    }
    with torch.no_grad():
        z_obs, z_goal = wm.encode_obs(obs), wm.encode_obs(goal)
    past = torch.randn(2, 2, cfg.action_dim, generator=g)
    return wm, planner, z_obs, z_goal, past


def test_candidates_only_read_and_mpc_writes_each_leaving_frame_once(monkeypatch):
    wm, planner, z_obs, z_goal, past = _setup()
    calls = []
    forward = wm.predictor.forward_memory

    def spy(x, state, commit=0):
        calls.append((x.shape[0], commit))
        return forward(x, state, commit)

    monkeypatch.setattr(wm.predictor, "forward_memory", spy)
    state = planner.init_state(2, seeds=[0, 1], past_actions=past)
    with torch.no_grad():
        _, state = planner.plan(z_obs, z_goal, state)
    writes = [c for c in calls if c[1]]
    assert writes == [(2, 1)]  # one write: both episodes, the one frame that executing one action pushes out
    reads = {rows for rows, commit in calls if not commit}
    assert reads == {2 * 6, 2}  # the candidates' rollouts (and the final plan's score) only read
    assert state.memory["store0.count"].tolist() == [1, 1]
    with torch.no_grad():
        _, state = planner.plan(z_obs, z_goal, state)
    assert state.memory["store0.count"].tolist() == [2, 2]


def test_the_episode_memory_is_untouched_by_its_candidates():
    wm, planner, z_obs, z_goal, past = _setup("mac_mem_vit")
    state = planner.init_state(2, seeds=[0, 1], past_actions=past)
    with torch.no_grad():
        _, state = planner.plan(z_obs, z_goal, state)
    before = {k: v.clone() for k, v in state.memory.items()}
    with torch.no_grad():
        _, after = planner.plan(z_obs, z_goal, state)
    for k, v in before.items():
        assert torch.equal(state.memory[k], v)  # the caller's state value is never modified
    assert any(
        not torch.equal(after.memory[k], v) for k, v in before.items()
    )  # the new one has one more frame


def test_the_memory_survives_the_plan_state_bytes():
    wm, planner, z_obs, z_goal, past = _setup()
    state = planner.init_state(2, seeds=[0, 1], past_actions=past)
    with torch.no_grad():
        _, state = planner.plan(z_obs, z_goal, state)
    restored = PlanState.from_bytes(state.to_bytes())
    for k, v in state.memory.items():
        assert torch.equal(restored.memory[k], v.cpu())
    with torch.no_grad():
        a, _ = planner.plan(z_obs, z_goal, state)
        b, _ = planner.plan(z_obs, z_goal, restored)
    torch.testing.assert_close(a.actions, b.actions, rtol=0, atol=0)


def test_a_memory_predictor_plans_like_the_plain_call_before_anything_is_remembered():
    wm, planner, z_obs, z_goal, past = _setup("transformerxl")
    act = torch.randn(3, 4, wm.action_encoder.in_dim)
    z0 = {k: v[:1].expand(3, *v.shape[1:]) for k, v in z_obs.items()}
    with torch.no_grad():
        plain = wm.rollout(None, act, z_obs0=z0)[1]
        empty = wm.rollout(None, act, z_obs0=z0, memory=wm.init_memory(1))[1]
    torch.testing.assert_close(empty, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", [p for p in list_presets("predictor") if p not in ("vit", "vit_small")])
def test_every_memory_preset_plans_and_remembers(preset):
    wm, planner, z_obs, z_goal, past = _setup(preset)
    state = planner.init_state(2, seeds=[0, 1], past_actions=past)
    with torch.no_grad():
        result, state = planner.plan(z_obs, z_goal, state)
        result2, _ = planner.plan(z_obs, z_goal, state)
    assert result.execute.shape == (2, 1, wm.action_encoder.in_dim) and torch.isfinite(result2.actions).all()
    assert set(state.memory) == set(wm.init_memory(2))  # the predictor's whole memory, carried

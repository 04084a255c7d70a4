"""The one planner interface: MPC warm starts, open vs closed loop by config, the plan state as a value."""

from dataclasses import replace

import pytest
import torch

from dinowm_core import load_config
from dinowm_core.data.normalization import Normalizer
from dinowm_core.planning import ActionBounds, PlanResult, PlanState, make_planner, normalized_zero_action
from dinowm_core.planning import planner as planner_mod
from tests.conftest import TINY
from tests.planning.plan_helpers import IntegratorWM, cem_cfg, gd_cfg, latents, tiny_obs, tiny_wm


class RecordingOptimizer:
    """Stands in for CEM: records each call's warm start and returns plans 100*call + step index."""

    def __init__(self):
        self.inits, self.count = [], 0

    def __call__(self, problem, cfg, *, init=None, generator=None):
        self.inits.append(None if init is None else init.clone())
        self.count += 1
        b, h, a = problem.batch_size, problem.horizon, problem.action_dim
        acts = self.count * 100 + torch.arange(h, dtype=torch.float32)[None, :, None].expand(b, -1, a)
        return PlanResult(actions=acts.clone(), loss=torch.zeros(b))


@pytest.fixture
def recording(monkeypatch):
    rec = RecordingOptimizer()
    monkeypatch.setattr(planner_mod, "cem", rec)
    return rec


def _mpc(horizon, n_taken, a_dim=2):
    return make_planner(cem_cfg(horizon, name="mpc_cem", n_taken=n_taken), IntegratorWM(a_dim))


def test_mpc_executes_the_first_chunks_and_warm_starts_from_the_untaken_tail(recording):
    planner = _mpc(horizon=5, n_taken=2)
    assert planner.closed_loop and planner.n_execute == 2
    z = latents(torch.zeros(3, 2))
    first, state = planner.plan(z, z, planner.init_state(3, [0, 1, 2]))
    assert first.execute.shape == (3, 2, 2) and torch.equal(
        first.execute[0, :, 0], torch.tensor([100.0, 101.0])
    )
    assert first.actions.shape == (3, 5, 2)  # the whole plan stays visible
    assert recording.inits[0] is None
    second, state = planner.plan(z, z, state)
    assert torch.equal(recording.inits[1][0, :, 0], torch.tensor([102.0, 103.0, 104.0]))  # untaken tail
    assert torch.equal(second.execute[0, :, 0], torch.tensor([200.0, 201.0]))
    assert state.step == 2
    planner.plan(z, z, planner.init_state(3, [0, 1, 2]))
    assert recording.inits[2] is None  # a fresh state forgets warm starts
    with pytest.raises(ValueError, match="holds 3 episodes but got a batch of 2"):
        planner.plan(latents(torch.zeros(2, 2)), z, state)


def test_mpc_with_n_taken_equal_to_horizon_has_no_warm_start(recording):
    planner = _mpc(horizon=3, n_taken=3)
    z = latents(torch.zeros(1, 2))
    _, state = planner.plan(z, z)
    _, state = planner.plan(z, z, state)
    assert recording.inits == [None, None] and state.warm_start is None
    with pytest.raises(ValueError, match="n_taken_actions"):
        _mpc(horizon=3, n_taken=4)


def test_open_and_closed_loop_differ_by_config_alone(recording):
    z = latents(torch.zeros(2, 2))
    open_loop = make_planner(cem_cfg(4), IntegratorWM(2))
    result, state = open_loop.plan(z, z)
    assert not open_loop.closed_loop and torch.equal(result.execute, result.actions)
    assert state.warm_start is None
    assert type(open_loop) is type(_mpc(horizon=4, n_taken=1))


def test_mpc_cem_closed_loop_reaches_the_goal_and_pads_the_warm_start():
    cfg = load_config(
        [
            *TINY,
            "planner=mpc_cem",
            "planner.horizon=4",
            "planner.mpc.n_taken_actions=2",
            "planner.cem.num_samples=64",
            "planner.cem.topk=8",
            "planner.cem.opt_steps=6",
        ]
    )
    planner = make_planner(cfg.planner, IntegratorWM(3))
    assert planner.closed_loop and planner.n_execute == 2
    s, goal = torch.zeros(2, 3), torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    state = planner.init_state(2, [0, 1])
    start_loss = ((goal - s) ** 2).mean(dim=1) * 2  # the objective of doing nothing
    for _ in range(3):
        result, state = planner.plan(latents(s), latents(goal), state)
        assert result.execute.shape == (2, 2, 3)
        assert (
            result.loss < 0.01 * start_loss
        ).all()  # every replan, from where the env is, reaches the goal
        s = s + result.execute.sum(dim=1)  # the "env" executes the chunks
    # the last plan (warm-started, zero padded to H) still reaches the goal with its untaken tail
    assert result.actions.shape == (2, 4, 3)
    torch.testing.assert_close(s + result.actions[:, 2:].sum(dim=1), goal, atol=0.15, rtol=0)


def test_make_planner_builds_each_kind_from_config():
    wm = IntegratorWM(3)
    for name in ("cem", "gd", "mpc_cem", "mpc_gd"):
        cfg = load_config(
            [
                *TINY,
                f"planner={name}",
                "planner.horizon=2",
                "planner.mpc.n_taken_actions=1",
                "planner.gd.opt_steps=3",
                "planner.cem.opt_steps=2",
                "planner.cem.num_samples=8",
                "planner.cem.topk=2",
            ]
        )
        planner = make_planner(cfg.planner, wm)
        result, _ = planner.plan(latents(torch.zeros(1, 3)), latents(torch.ones(1, 3)))
        assert result.actions.shape == (1, 2, 3)
        assert result.execute.shape == (1, 1 if name.startswith("mpc_") else 2, 3)


def test_plan_state_round_trips_through_bytes_and_refuses_garbage():
    planner = make_planner(gd_cfg(3, name="mpc_gd", opt_steps=2), IntegratorWM(2))
    z = latents(torch.zeros(2, 2))
    _, state = planner.plan(z, latents(torch.ones(2, 2)), planner.init_state(2, [5, 6]))
    again = PlanState.from_bytes(state.to_bytes())
    assert torch.equal(again.rng, state.rng) and torch.equal(again.warm_start, state.warm_start)
    assert again.step == state.step == 1 and again.past_actions is None
    # the same next plan from the original and from the restored state
    a, _ = planner.plan(z, z, state)
    b, _ = planner.plan(z, z, again)
    assert torch.equal(a.actions, b.actions)
    for bad in (b"", b"\x00" * 16, b"not a state at all"):
        with pytest.raises(ValueError, match="plan state"):
            PlanState.from_bytes(bad)
    with pytest.raises(ValueError, match="warm_start must be"):
        replace(state, warm_start=torch.zeros(3, 2, 2))


def test_context_frames_take_their_actions_from_the_state():
    """A planner fed the last n frames uses the executed actions between them, kept in the state."""
    wm = tiny_wm()  # num_hist 3: the state keeps the last 2 executed model actions
    planner = make_planner(cem_cfg(2, name="mpc_cem", num_samples=8, topk=2, opt_steps=1), wm)
    with torch.no_grad():
        z = wm.encode_obs(tiny_obs(wm.cfg, b=2, t=3))
    state = planner.init_state(2, [0, 1])
    with pytest.raises(ValueError, match="3 context frames need the 2 actions"):
        planner.plan(z, z, state)
    one = {k: v[:, :1] for k, v in z.items()}
    r1, state = planner.plan(one, one, state)
    r2, state = planner.plan(one, one, state)
    assert torch.equal(state.past_actions, torch.cat([r1.execute, r2.execute], dim=1))
    result, _ = planner.plan(z, {k: v[:, -1:] for k, v in z.items()}, state)  # 3 frames, 2 past actions
    assert result.actions.shape == (2, 2, wm.cfg.action_dim)


def test_action_bounds_and_zero_action_from_env_units():
    norm = Normalizer(action_mean=[1.0, 0.0], action_std=[2.0, 0.5], proprio_mean=[0.0], proprio_std=[1.0])
    b = ActionBounds.from_env([-1.0, -1.0], [1.0, 1.0], norm, frameskip=3)
    torch.testing.assert_close(b.low, torch.tensor([-1.0, -2.0] * 3))
    torch.testing.assert_close(b.high, torch.tensor([0.0, 2.0] * 3))
    torch.testing.assert_close(normalized_zero_action(norm, 2, 3), torch.tensor([-0.5, 0.0] * 3))


def test_a_plan_that_ends_with_the_budget_is_shorter_and_starts_from_the_cut_warm_start(recording):
    planner = _mpc(horizon=5, n_taken=2)
    z = latents(torch.zeros(2, 2))
    _, state = planner.plan(z, z, planner.init_state(2, [0, 1]))  # tail 102, 103, 104 kept
    second, state = planner.plan(z, z, state, horizon=2)
    assert torch.equal(recording.inits[1][0, :, 0], torch.tensor([102.0, 103.0]))  # cut to the new horizon
    assert second.actions.shape == (2, 2, 2)
    assert torch.equal(second.execute[0, :, 0], torch.tensor([200.0, 201.0]))
    assert state.warm_start is None  # nothing left untaken
    last, state = planner.plan(z, z, state, horizon=1)
    assert last.execute.shape == (2, 1, 2) and state.step == 3  # n_taken 2, but only 1 step was planned
    for bad in (0, 6):
        with pytest.raises(ValueError, match=r"horizon must be in \[1, planner.horizon=5\]"):
            planner.plan(z, z, state, horizon=bad)


def test_budget_horizon_covers_the_steps_left_up_to_the_planners_horizon():
    from dinowm_core.planning import budget_horizon

    assert [budget_horizon(5, 5, left) for left in (50, 25, 24, 21, 20, 5, 1)] == [5, 5, 5, 5, 4, 1, 1]
    assert budget_horizon(10, 5, 50) == 10 and budget_horizon(10, 5, 26) == 6
    with pytest.raises(ValueError, match="steps_left and frameskip must be >= 1"):
        budget_horizon(5, 5, 0)

"""Object recall by planning (``object_goal``): the episode hides the object before the goal is given, success
is decided by the env alone (a policy that knows the way always succeeds, one that does not never does), and a
model plans it through the planner interface with its memory of the observed frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinowm_core import build_world_model, load_config
from dinowm_core.config import MemoryEvalConfig
from dinowm_core.data.four_rooms_policies import next_action
from dinowm_core.envs.four_rooms import LEFT
from dinowm_core.evaluation.adapter import ModelAdapter
from dinowm_core.evaluation.memory import (
    EpisodeBuilder,
    GoalRunner,
    ModelImaginer,
    episode_specs,
    run_memory_eval,
)
from dinowm_core.evaluation.memory.world import replay, visible_cells
from dinowm_core.evaluation.policy import build_policy

GRID = MemoryEvalConfig(episodes=3, num_objects=[2], horizons=[6], tasks=["object_goal"], goal_budget=24)
MODEL = ["env=four_rooms", "encoder=dino_tiny", "decoder=none", "img_size=64", "frameskip=1", "num_hist=3",
         "predictor.depth=1", "predictor.heads=2", "predictor.dim_head=16", "predictor.mlp_dim=64",
         "planner=mpc_cem_discrete", "planner.horizon=2", "planner.cem.num_samples=8", "planner.cem.topk=2",
         "planner.cem.opt_steps=1"]  # fmt: skip


@pytest.fixture(scope="module")
def episodes():
    builder = EpisodeBuilder()
    return [builder.build(s, with_map=True) for s in episode_specs(GRID, img_size=64)]


class WayPolicy:
    """Knows the world: the shortest way to the goal cell (the oracle)."""

    closed_loop = True

    def __init__(self, env) -> None:
        self.env = env

    def reset(self, episode_seeds, seed, *, memory=None) -> None:
        self.memory = memory

    def plan(self, obs, goal, steps_left=None):
        a = next_action(
            self.env.blocked, obs["proprio"][0].astype(int), tuple(goal["proprio"][0][:2].astype(int))
        )
        return np.array([[[float(a)]]])


class TurnPolicy(WayPolicy):
    """Turns on the spot: never gets anywhere."""

    def plan(self, obs, goal, steps_left=None):
        return np.array([[[float(LEFT)], [float(LEFT)]]])


def test_the_object_is_out_of_view_when_the_goal_is_given(episodes):
    builder = EpisodeBuilder()
    for ep in episodes:
        builder.env.set_env_params(ep.params)
        cell = tuple(ep.params["objects"][0][2:])
        goal_state = tuple(ep.info["goal_state"])
        assert cell in visible_cells(builder.env, goal_state)  # the goal view shows the object
        last = [tuple(int(v) for v in p) for p in ep.proprio[-GRID.clear_frames :]]
        assert all(cell not in visible_cells(builder.env, s) for s in last)  # ... which has left the view
        assert any(
            cell in visible_cells(builder.env, tuple(int(v) for v in p)) for p in ep.proprio
        )  # was shown
        way = ep.probes["goal"]
        assert 0 < ep.info["shortest"] == len(way.actions) <= GRID.goal_budget
        assert replay(builder.env.blocked, last[-1], list(way.actions))[-1] == goal_state
        np.testing.assert_array_equal(way.frames[-1], builder.build(ep.spec).probes["goal"].frames[-1])


def test_success_comes_from_the_env(episodes):
    runner = GoalRunner(None, None)
    runner.policy = WayPolicy(runner.env)
    rows = [runner.run(ep) for ep in episodes]
    assert all(r["success"] and r["distance"] == 0 and 0 < r["steps"] <= r["shortest"] for r in rows)
    assert all(0 < r["start_distance"] <= r["shortest"] for r in rows)
    runner.policy = TurnPolicy(runner.env)
    rows = [runner.run(ep) for ep in episodes]
    assert not any(r["success"] for r in rows)
    assert all(r["steps"] == GRID.goal_budget and r["distance"] == r["start_distance"] > 0 and r["spl"] == 0
               for r in rows)  # fmt: skip


@pytest.mark.parametrize("predictor", ["vit_small", "transformerxl"])
def test_a_model_plans_it_with_its_memory(episodes, predictor, tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = load_config([*MODEL, f"predictor={predictor}"])
    wm = build_world_model(cfg).eval()
    imaginer = ModelImaginer(wm)
    policy = build_policy(cfg, adapter=ModelAdapter(wm))
    goal = GoalRunner(imaginer, policy)
    seen = []
    reset = type(policy).reset
    monkeypatch.setattr(
        type(policy), "reset", lambda self, *a, **k: (seen.append(k["memory"]), reset(self, *a, **k))
    )
    ep = episodes[0]
    result = run_memory_eval(GRID, imaginer, [ep], videos_dir=tmp_path, goal=goal)
    pooled = result["tasks"]["object_goal"]["pooled"]
    assert pooled["n"] == 1 and 0 <= pooled["rate"] <= 1 and {"spl", "steps", "closer"} <= set(pooled)
    assert [r["task"] for r in result["episodes"]] == ["object_goal"]
    assert len(result["videos"]) == 1
    if wm.has_memory:  # the observed frames but the current one are in the memory the planner starts from
        expect = imaginer.read(ep.frames[None], ep.proprio[None], ep.actions[None], keep=1)
        assert seen[-1] and all(torch.equal(seen[-1][k], v) for k, v in expect.items())
        assert any(v.abs().sum() > 0 for v in seen[-1].values())
    else:
        assert all(m is None for m in seen)


def test_a_budget_no_way_fits_says_so():
    spec = episode_specs(GRID.model_copy(update={"goal_budget": 2}), img_size=64)[0]
    with pytest.raises(RuntimeError, match="goal_budget=2: raise it"):
        EpisodeBuilder().build(spec)


def test_needs_a_runner(episodes):
    with pytest.raises(ValueError, match="GoalRunner"):
        run_memory_eval(GRID, None, episodes[:1])

"""random_state goals in dataset layouts (reference 5.2) and mean_visual_dist / mean_proprio_dist (reference 5.7)."""

from __future__ import annotations

import json
import logging

import numpy as np

from dinowm_core.envs.base import make_env
from dinowm_core.evaluation.goals import Target, make_targets, save_targets
from dinowm_core.evaluation.loop import evaluate, layout_dataset
from dinowm_core.evaluation.report import goal_distances
from tests.evaluation.eval_helpers import make_wall_dataset, tiny_cfg


class _LayoutStore:
    """The two store methods make_targets reads: every val trajectory has its own wall layout."""

    LAYOUTS = {
        0: {"wall_x": 22, "door_y": 20},
        3: {"wall_x": 42, "door_y": 44},
        5: {"wall_x": 30, "door_y": 36},
    }

    def episode_length(self, ep: int) -> int:
        return 10

    def env_params(self, ep: int) -> dict:
        return dict(self.LAYOUTS[ep])


def test_random_state_episodes_take_dataset_layouts():
    env = make_env("wall", img_size=64)
    store, eps = _LayoutStore(), np.array([0, 3, 5])
    targets = make_targets(env, "random_state", 7, 12, store=store, val_episodes=eps)
    layouts = {(t.env_params["wall_x"], t.env_params["door_y"]) for t in targets}
    assert len(layouts) > 1 and layouts <= {(v["wall_x"], v["door_y"]) for v in _LayoutStore.LAYOUTS.values()}
    for t in targets:
        assert t.env_params == store.env_params(t.origin["layout_episode"])
        # init and goal were sampled against this episode's wall, not the default one at x = 32
        for state in (t.init_state, t.goal_state):
            assert abs(state[0] - t.env_params["wall_x"]) > 3
        # the goal frame is rendered in the episode's layout
        env.set_env_params(t.env_params)
        obs, _ = env.reset(seed=0, options={"state": t.goal_state, "env_params": t.env_params})
        np.testing.assert_array_equal(obs["visual"], t.goal_obs["visual"])
    again = make_targets(make_env("wall", img_size=64), "random_state", 7, 12, store=store, val_episodes=eps)
    assert [t.to_dict() for t in again] == [t.to_dict() for t in targets]  # seeded


def test_random_state_without_a_dataset_keeps_the_default_layout_and_says_so(caplog):
    env = make_env("wall", img_size=64)
    with caplog.at_level(logging.INFO, logger="dinowm_core.evaluation.goals"):
        targets = make_targets(env, "random_state", 7, 4)
    assert all(t.env_params == {"wall_x": 32, "door_y": 30} for t in targets)
    assert "default layout" in caplog.text
    make_targets(env, "random_state", 7, 4, store=_LayoutStore(), val_episodes=np.array([3]))
    assert env.env_params == {"wall_x": 32, "door_y": 30}  # no layout leaks into the next call


def test_layout_dataset_comes_from_data_path(tmp_path, caplog):
    data = make_wall_dataset(tmp_path)
    val = layout_dataset(tiny_cfg(f"data.path={data}", "data.split_ratio=0.5"))
    assert val is not None and len(val.episodes) == 4
    with caplog.at_level(logging.INFO, logger="dinowm_core.evaluation.loop"):
        assert layout_dataset(tiny_cfg(f"data.path={tmp_path / 'missing'}")) is None
    assert "default layout" in caplog.text


# ---- mean_visual_dist / mean_proprio_dist -----------------------------------------------------------
def test_goal_distances_are_mean_absolute_differences_without_uint8_wraparound():
    final = {"visual": np.zeros((2, 4, 4, 3), np.uint8), "proprio": np.array([[0.0, 0.0], [1.0, 3.0]])}
    goal = {"visual": np.full((2, 4, 4, 3), 255, np.uint8), "proprio": np.array([[0.0, 0.0], [2.0, 0.0]])}
    goal["visual"][1] = 0
    visual, proprio = goal_distances(final, goal)
    np.testing.assert_allclose(visual, [255.0, 0.0])  # uint8 0 - 255 would wrap to 1
    np.testing.assert_allclose(proprio, [0.0, 2.0])


class _Push:
    """+x at ``speed`` (2 px per env step at 1), ``chunk`` env steps per call."""

    closed_loop = True

    def __init__(self, speed: float, chunk: int = 5) -> None:
        self.speed, self.chunk = speed, chunk

    def reset(self, episode_seeds, seed):
        self.n = len(episode_seeds)

    def plan(self, obs, goal, steps_left=None):
        return np.tile([self.speed, 0.0], (self.n, self.chunk, 1))


def test_visual_and_proprio_dist_in_results_json_and_metrics(tmp_path):
    # goal 6 px right of the start; after 2 env steps at full speed the dot is 2 px short of it
    t = Target(0, np.array([10.0, 20.0]), np.array([16.0, 20.0]), {"wall_x": 32, "door_y": 30})
    path = save_targets(tmp_path / "goals.json", [t, t])
    cfg = tiny_cfg("eval.goal_source=file", f"eval.goal_file={path}", "eval.n_evals=2", "eval.budget=2",
                   "eval.seeds=[0]")  # fmt: skip
    moved = evaluate(None, cfg, policy=_Push(1.0), out_dir=tmp_path / "moved")
    m = moved.per_seed[0][0]
    assert m.proprio_dist == 1.0  # mean(|14 - 16|, |20 - 20|) in raw proprio (px)
    assert m.visual_dist > 0
    still = evaluate(None, cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"budget": 1})}),
                     policy=_Push(0.0))  # fmt: skip
    s = still.per_seed[0][0]
    # further from the goal: more pixels differ
    assert s.proprio_dist == 3.0 and s.visual_dist > m.visual_dist
    summary = json.loads((tmp_path / "moved" / "results.json").read_text())["pooled"]
    assert summary["mean_visual_dist"] == m.visual_dist and summary["mean_proprio_dist"] == 1.0
    flat = moved.flat_metrics("plan")
    assert flat["plan/mean_proprio_dist"] == 1.0 and "plan/seed0/mean_visual_dist" in flat

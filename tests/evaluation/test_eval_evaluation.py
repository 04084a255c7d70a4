"""In-process planning evaluation: fixed budget, batched planning, metrics, CI, JSON and videos."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest

from dinowm_core.evaluation.goals import Target, save_targets
from dinowm_core.evaluation.loop import check_model_env, evaluate
from dinowm_core.evaluation.report import protocol, summarize, wilson_interval
from tests.evaluation.eval_helpers import make_wall_dataset, tiny_cfg, tiny_wm


def _by_episode(result, seed):
    keep = (
        "episode_seed",
        "success",
        "success_any_step",
        "distance",
        "min_distance",
        "env_steps",
        "plan_calls",
    )
    return [{k: m.to_dict()[k] for k in keep} for m in result.per_seed[seed]]


def test_mpc_cem_end_to_end_writes_json_and_video(tmp_path):
    cfg = tiny_cfg("eval.n_evals=2", "eval.budget=30", "eval.seeds=[1,2]", "eval.n_plot_samples=1")
    result = evaluate(tiny_wm(cfg), cfg, out_dir=tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["protocol"]["policy"] == "mpc_cem" and "no oracle stop" in data["protocol"]["label"]
    assert data["pooled"]["n"] == 4 and set(data["per_seed"]) == {"1", "2"}
    for ep in data["per_seed"]["1"]["episodes"]:
        assert ep["env_steps"] == 30  # fixed budget: every episode runs to the end
        assert ep["plan_calls"] == math.ceil(30 / (5 * 5))  # MPC: n_taken 5 model steps x frameskip 5
        assert ep["div_visual_emb"] >= 0 and ep["plan_s_per_step"] > 0
    lo, hi = data["pooled"]["success_ci95"]
    assert lo <= data["pooled"]["success_rate"] <= hi
    assert result.summary()["success_rate"] == data["pooled"]["success_rate"]
    assert len(data["videos"]) == 2  # first episode of each seed
    frames = iio.imread(tmp_path / data["videos"][0], plugin="pyav")
    assert frames.shape == (31, 64, 3 * 64, 3)  # budget + 1 frames of [real | imagined | goal]
    assert frames[:, :, :64].std() > 1 and frames[:, :, 64:128].std() > 0  # real and imagined panels drawn


def test_plans_do_not_depend_on_batch_composition():
    """One generator per episode: the first two episodes come out the same with 2 or 4 in the batch."""
    cfg2 = tiny_cfg("eval.n_evals=2", "eval.budget=20", "eval.seeds=[5]")
    cfg4 = tiny_cfg("eval.n_evals=4", "eval.budget=20", "eval.seeds=[5]")
    wm = tiny_wm(cfg2)
    a, b = evaluate(wm, cfg2), evaluate(wm, cfg4)
    assert _by_episode(a, 5) == _by_episode(b, 5)[:2]
    assert _by_episode(a, 5) == _by_episode(evaluate(wm, cfg2), 5)  # deterministic


def test_random_baseline_stays_in_box_and_is_deterministic(tmp_path):
    cfg = tiny_cfg("eval.policy=random", "eval.n_evals=4", "eval.budget=25", "eval.seeds=[3]")
    r1, r2 = evaluate(None, cfg), evaluate(None, cfg, out_dir=tmp_path)
    assert _by_episode(r1, 3) == _by_episode(r2, 3)
    assert json.loads((tmp_path / "results.json").read_text())["protocol"]["policy"] == "random"
    assert all(m.env_steps == 25 for m in r1.per_seed[3])
    # the baseline moves the dot (distance changes) and differs between episodes
    assert len({round(m.final["distance"], 6) for m in r1.per_seed[3]}) == 4
    from dinowm_core.evaluation.policy import RandomPolicy

    pol = RandomPolicy(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), chunk=25)
    pol.reset([7, 8], seed=0)
    acts = pol.plan({}, {})
    assert acts.shape == (2, 25, 2) and acts.min() >= -1 and acts.max() <= 1 and acts.std() > 0.4


class _PushRight:
    """A stand-in policy: always +x at full speed (2 px per env step), ``chunk`` env steps per call."""

    closed_loop = True

    def __init__(self, chunk: int = 5) -> None:
        self.chunk = chunk

    def reset(self, episode_seeds, seed):
        self.n = len(episode_seeds)

    def plan(self, obs, goal, steps_left=None):
        return np.tile([1.0, 0.0], (self.n, self.chunk, 1))


def _near_goal_file(tmp_path, goal_dx: float = 6.0):
    # default: goal 6 px right of the start, left of the wall: success (< 4.5 px) after steps 1-5, not after 6
    t = Target(0, np.array([10.0, 20.0]), np.array([10.0 + goal_dx, 20.0]), {"wall_x": 32, "door_y": 30})
    return save_targets(tmp_path / "near.json", [t, t])


@pytest.mark.parametrize("oracle", [False, True])
def test_success_at_end_vs_any_step_and_oracle_stop(tmp_path, oracle):
    cfg = tiny_cfg("eval.goal_source=file", f"eval.goal_file={_near_goal_file(tmp_path)}", "eval.n_evals=2",
                   "eval.budget=20", "eval.seeds=[0]", f"eval.oracle_stop={str(oracle).lower()}")  # fmt: skip
    result = evaluate(None, cfg, policy=_PushRight())
    m = result.per_seed[0][0]
    assert m.success_any_step and m.first_success_step == 1
    if oracle:  # checked at the end of the first executed chunk (5 env steps), as the reference MPC
        assert m.success and m.stopped_by_oracle and m.env_steps == 5
        assert "oracle stop" in result.protocol["label"]
    else:
        assert not m.success and m.env_steps == 20 and m.final["distance"] > 4.5
        assert result.summary()["success_rate"] == 0 and result.summary()["success_any_step_rate"] == 1


def _oracle_cfg(goal_file, *extra):
    return tiny_cfg("eval.goal_source=file", f"eval.goal_file={goal_file}", "eval.n_evals=2", "eval.budget=20",
                    "eval.seeds=[0]", "eval.oracle_stop=true", *extra)  # fmt: skip


def test_oracle_stop_ignores_a_success_passed_within_a_chunk(tmp_path):
    """Success during steps 1-5 of a 10-step chunk, gone at its end: the reference never sees it."""
    result = evaluate(None, _oracle_cfg(_near_goal_file(tmp_path)), policy=_PushRight(chunk=10))
    m = result.per_seed[0][0]
    assert not m.stopped_by_oracle and m.env_steps == 20 and not m.success
    # the per-step secondary metric still sees it
    assert m.success_any_step and m.first_success_step == 1


def test_oracle_stop_executes_at_least_one_chunk(tmp_path):
    """An episode that starts at its goal is not a success before any action (the reference plans first)."""
    result = evaluate(None, _oracle_cfg(_near_goal_file(tmp_path, goal_dx=-2.0)), policy=_PushRight())
    m = result.per_seed[0][0]
    assert m.first_success_step == 0  # at the goal at reset...
    assert m.env_steps == 20 and not m.stopped_by_oracle and not m.success  # ...then pushed away


def test_open_loop_label_says_what_ran():
    cfg = tiny_cfg("planner=cem", "eval.n_evals=1", "eval.budget=30", "eval.seeds=[0]")
    result = evaluate(tiny_wm(cfg), cfg)
    assert result.per_seed[0][0].env_steps == 25  # one plan of horizon 5 x frameskip 5
    label = result.protocol["label"]
    assert "open loop" in label and "25 env steps executed" in label and "fixed budget" not in label
    mpc = tiny_cfg("eval.budget=30")
    assert protocol(mpc)["label"].startswith("fixed budget of 30 env steps")
    cut = protocol(tiny_cfg("planner=gd", "eval.budget=10"))["label"]
    assert "10 env steps executed, cut to the budget of 10" in cut


def test_dset_goals_in_evaluation(tmp_path):
    from dinowm_core.data.windows import build_datasets

    data = make_wall_dataset(tmp_path)
    cfg = tiny_cfg("eval.goal_source=dset", "eval.goal_H=2", "eval.n_evals=2", "eval.budget=10",
                   "eval.seeds=[4]", f"data.path={data}", "data.split_ratio=0.5")  # fmt: skip
    result = evaluate(tiny_wm(cfg, data), cfg)
    val = set(build_datasets(cfg)[3].episodes.tolist())
    assert len(result.per_seed[4]) == 2 and all(m.env_steps == 10 for m in result.per_seed[4])
    assert val  # goals came from held-out trajectories (checked in test_eval_goals)


def test_wilson_interval_known_values():
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.27753), atol=1e-5)
    np.testing.assert_allclose(wilson_interval(5, 10), (0.23659, 0.76341), atol=1e-5)
    np.testing.assert_allclose(wilson_interval(10, 10), (0.72247, 1.0), atol=1e-5)
    np.testing.assert_allclose(wilson_interval(48, 50), (0.86540, 0.98896), atol=2e-5)
    lo, hi = wilson_interval(12, 50)
    assert lo < 12 / 50 < hi
    s = summarize([{"success": i < 3, "success_any_step": i < 4, "distance": float(i)} for i in range(10)])
    assert s["success_rate"] == 0.3 and s["success_any_step_rate"] == 0.4 and s["mean_distance"] == 4.5
    np.testing.assert_allclose(s["success_ci95"], wilson_interval(3, 10))


def test_model_env_mismatch_is_an_error():
    model = tiny_cfg()
    check_model_env(model, model)
    with pytest.raises(ValueError, match="action dim 10 != env 'wall' action dim 2 x frameskip 3 = 6"):
        check_model_env(tiny_cfg("frameskip=3"), model)
    with pytest.raises(ValueError, match="trained on env 'wall'"):
        check_model_env(tiny_cfg("env=pusht"), model)


@pytest.mark.parametrize("end_at_budget", [False, True])
def test_end_at_budget_plans_up_to_the_end_of_the_episode(monkeypatch, end_at_budget):
    """Budget 32 env steps, frameskip 5, MPC horizon 5 executing 3: plans at env steps 0, 15 and 30 have 32, 17
    and 2 steps left, so with ``planner.end_at_budget`` they plan 5, 4 and 1 model steps (else 5 each)."""
    from dinowm_core.planning.planner import Planner

    horizons, plan = [], Planner.plan

    def spy(self, z_obs, z_goal, state=None, *, horizon=None):
        result, nxt = plan(self, z_obs, z_goal, state, horizon=horizon)
        horizons.append(result.actions.shape[1])
        return result, nxt

    monkeypatch.setattr(Planner, "plan", spy)
    cfg = tiny_cfg("eval.n_evals=2", "eval.budget=32", "eval.seeds=[0]", "planner.mpc.n_taken_actions=3",
                   f"planner.end_at_budget={str(end_at_budget).lower()}")  # fmt: skip
    result = evaluate(tiny_wm(cfg), cfg)
    assert horizons == ([5, 4, 1] if end_at_budget else [5, 5, 5])
    assert all(m.env_steps == 32 and m.plan_calls == 3 for m in result.per_seed[0])

"""Plans are the same numbers as before the one-planner-interface change (tests/fixtures/v1, bit for bit).

The fixtures were written by the previous planner functions (``cem_plan``, ``gd_plan``, ``MPCPlanner``) from a
checkpoint of that time; here the same problems go through ``make_planner(...).plan(...)`` with the same
per-episode seeds and must give identical tensors, in fp32 and in bf16 on this CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinowm_core import load_config, load_world_model
from dinowm_core.planning import PlanProblem, Rollout, cem_discrete, make_planner
from tests.conftest import TINY

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
SEEDS = [0, 1, 2]
CEM = ["planner.cem.num_samples=16", "planner.cem.topk=4", "planner.cem.opt_steps=3"]
GD = ["planner.gd.opt_steps=3", "planner.gd.lr=0.1"]


@pytest.fixture(scope="module")
def gold():
    return load_file(str(FIXTURES / "plans_v1.safetensors"))


@pytest.fixture(scope="module")
def problem(gold):
    torch.set_num_threads(2)
    wm = load_world_model(FIXTURES / "ckpt_v1").eval()
    with torch.no_grad():
        z_obs = wm.encode_obs({"visual": gold["obs_visual"], "proprio": gold["obs_proprio"]})
        z_goal = wm.encode_obs({"visual": gold["goal_visual"], "proprio": gold["goal_proprio"]})
    return wm, z_obs, z_goal


def _planner(wm, name: str, *overrides: str):
    cfg = load_config([*TINY, f"planner={name}", "planner.horizon=3", *overrides]).planner
    return make_planner(cfg, wm)


def _last(z):
    return {k: v[:, -1:] for k, v in z.items()}


def _equal(result, gold, key):
    assert torch.equal(result.actions, gold[f"{key}/actions"]), f"{key}: actions differ"
    assert torch.equal(result.loss, gold[f"{key}/loss"]), f"{key}: loss differs"


@pytest.mark.parametrize(
    "key, overrides",
    [
        ("cem_fp32", []),
        ("cem_bf16", ["planner.amp=true"]),
        ("cem_nokv", ["planner.kv_cache=false"]),
        ("cem_align", ["planner.align=true"]),
        ("cem_chunk", ["planner.cem.chunk_size=7"]),
        ("ol_cem", []),
    ],
)
def test_open_loop_cem_is_unchanged(problem, gold, key, overrides):
    wm, z_obs, z_goal = problem
    planner = _planner(wm, "cem", *CEM, *overrides)
    result, state = planner.plan(_last(z_obs), z_goal, planner.init_state(3, SEEDS))
    _equal(result, gold, key)
    assert torch.equal(result.execute, result.actions) and state.warm_start is None  # executed whole


def test_cem_with_a_three_frame_context_is_unchanged(problem, gold):
    wm, z_obs, z_goal = problem
    planner = _planner(wm, "cem", *CEM)
    state = planner.init_state(3, SEEDS, past_actions=gold["ctx_act"])
    result, _ = planner.plan(z_obs, z_goal, state)
    _equal(result, gold, "cem_ctx")


@pytest.mark.parametrize(
    "key, overrides", [("gd_fp32", []), ("gd_bf16", ["planner.amp=true"]), ("ol_gd", [])]
)
def test_open_loop_gd_is_unchanged(problem, gold, key, overrides):
    wm, z_obs, z_goal = problem
    planner = _planner(wm, "gd", *GD, *overrides)
    result, _ = planner.plan(_last(z_obs), z_goal, planner.init_state(3, SEEDS))
    _equal(result, gold, key)


@pytest.mark.parametrize("name, extra", [("mpc_cem", CEM), ("mpc_gd", GD)])
@pytest.mark.parametrize("amp", [False, True])
def test_mpc_over_three_closed_loop_calls_is_unchanged(problem, gold, name, extra, amp):
    wm, z_obs, z_goal = problem
    planner = _planner(wm, name, *extra, "planner.mpc.n_taken_actions=1", f"planner.amp={str(amp).lower()}")
    tag = f"{name}_{'bf16' if amp else 'fp32'}"
    state = planner.init_state(3, SEEDS)
    for i in range(3):
        z_now = {k: v[:, i : i + 1] for k, v in z_obs.items()}
        result, state = planner.plan(z_now, z_goal, state)
        assert torch.equal(result.execute, gold[f"{tag}/chunk{i}"]), f"{tag}: call {i} executes other actions"
        assert torch.equal(result.loss, gold[f"{tag}/loss{i}"]), f"{tag}: call {i} loss differs"
    assert torch.equal(state.warm_start, gold[f"{tag}/warm"])


def test_mpc_state_survives_serialization_between_calls(problem, gold):
    """A service that hands the state to a client and takes it back plans exactly as one that keeps it."""
    wm, z_obs, z_goal = problem
    planner = _planner(wm, "mpc_cem", *CEM, "planner.mpc.n_taken_actions=1")
    state = planner.init_state(3, SEEDS)
    for i in range(3):
        z_now = {k: v[:, i : i + 1] for k, v in z_obs.items()}
        result, state = planner.plan(z_now, z_goal, state)
        state = type(state).from_bytes(state.to_bytes())
        assert torch.equal(result.execute, gold[f"mpc_cem_fp32/chunk{i}"])
    assert torch.equal(state.warm_start, gold["mpc_cem_fp32/warm"])


def test_discrete_cem_is_unchanged(problem, gold):
    wm, z_obs, z_goal = problem
    cfg = load_config([*TINY, "planner.cem.num_samples=8", "planner.cem.topk=3", "planner.cem.opt_steps=2"])
    prob = PlanProblem(wm, Rollout(wm), _last(z_obs), z_goal, 3, cfg.planner.objective)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    _equal(cem_discrete(prob, cfg.planner.cem, gold["dcem/action_set"], generator=gens), gold, "dcem")


TIMING = {"plan_seconds", "plan_s_per_step"}


@pytest.mark.slow
def test_a_checkpoint_written_before_the_change_evaluates_the_same(tmp_path):
    """The v1 checkpoint, evaluated in-process on Wall, gives the same per-episode metrics as then."""
    from dinowm_core.data.generate import generate
    from dinowm_core.evaluation.loop import evaluate
    from dinowm_core.presets import plan_config
    from dinowm_core.training.checkpoint import load_config_from_checkpoint

    torch.set_num_threads(2)
    data = tmp_path / "wall_ds"
    generate("wall", 6, 30, data, seed=0, workers=1, img_size=64, progress=False)
    expected = json.loads((FIXTURES / "eval_v1.json").read_text())
    for name in ("mpc_cem", "cem"):
        cfg = plan_config(load_config_from_checkpoint(FIXTURES / "ckpt_v1"), [
            f"planner={name}", "planner.horizon=3", "planner.cem.num_samples=12", "planner.cem.topk=3",
            "planner.cem.opt_steps=2", "planner.mpc.n_taken_actions=2", "eval.device=cpu", "eval.n_plot_samples=0",
            "eval.n_evals=3", "eval.budget=20", "eval.seeds=[0,1]", f"data.path={data}",
        ])  # fmt: skip
        result = evaluate(load_world_model(FIXTURES / "ckpt_v1"), cfg)
        for seed, episodes in expected[name].items():
            got = [
                {k: v for k, v in m.items() if k not in TIMING}
                for m in result.to_dict()["per_seed"][seed]["episodes"]
            ]
            want = [{k: v for k, v in m.items() if k not in TIMING} for m in episodes]
            assert got == want, f"{name}, seed {seed}: episode metrics differ"

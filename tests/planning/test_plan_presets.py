"""Per-env planning presets (reference 5.6 table, section 8) and goal_H vs planner.horizon (reference 5.1)."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from dinowm_core import load_config
from dinowm_core.config import ConfigError
from dinowm_core.presets import plan_config, preset_overrides
from ray_jobs.cli import app
from tests.evaluation.eval_helpers import EVAL_TINY, make_wall_dataset, tiny_cfg, tiny_checkpoint, tiny_wm

# What the reference's plan_<env>.yaml files set: (goal_source, alpha, CEM opt_steps).
REFERENCE = {
    "pusht": ("dset", 1.0, 30),
    "point_maze": ("random_state", 0.0, 10),
    "wall": ("random_state", 1.0, 10),
}


def _ckpt_cfg(env: str, *extra: str):
    # A checkpoint's config: training-time planner defaults (alpha 1, opt_steps 30), no eval settings.
    return load_config([f"env={env}", "encoder=dino_tiny", "img_size=64", "planner=cem", *extra])


@pytest.mark.parametrize("env", sorted(REFERENCE))
def test_reference_env_presets_are_applied(env):
    cfg = plan_config(_ckpt_cfg(env), [])
    source, alpha, steps = REFERENCE[env]
    assert (cfg.eval.goal_source, cfg.planner.objective.alpha, cfg.planner.cem.opt_steps) == (
        source,
        alpha,
        steps,
    )
    assert cfg.eval.goal_H == cfg.planner.horizon == 5  # reference goal_H 5 = horizon
    assert cfg.planner.name == "mpc_cem" and cfg.planner.mpc.n_taken_actions == 5  # every released env config
    assert cfg.presets["plan"] == env


@pytest.mark.parametrize("env", ["reacher", "rope", "granular"])
def test_every_env_has_a_valid_preset(env):
    assert preset_overrides(env)  # explicit, even where the reference releases no plan config
    cfg = plan_config(_ckpt_cfg(env), [])
    assert cfg.presets["plan"] == env and cfg.eval.goal_source == "random_state"


def test_command_line_wins_over_the_preset_and_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="dinowm_core.presets"):
        cfg = plan_config(_ckpt_cfg("point_maze"), ["planner.objective.alpha=1", "planner=cem"])
    # the user's alpha wins; a planner group selection does not wipe the preset's opt_steps
    assert (
        cfg.planner.name == "cem" and cfg.planner.objective.alpha == 1.0 and cfg.planner.cem.opt_steps == 10
    )
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "point_maze.yaml" in msg and "planner.cem.opt_steps=10" in msg and "planner.objective.alpha" in msg
    assert "command line wins for planner.name, planner.objective.alpha" in msg  # planner=cem beat mpc_cem


def test_preset_keys_are_validated(tmp_path, monkeypatch):
    base = _ckpt_cfg("wall")
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "wall.yaml").write_text("planner.cem.opt_stepz: 3\n")
    monkeypatch.setenv("DINOWM_CONF_DIR", str(tmp_path))  # a typo in a preset fails naming the key
    with pytest.raises(ConfigError, match="opt_stepz"):
        plan_config(base, [])


# ---- goal_H vs planner.horizon ----------------------------------------------------------------------
def test_goal_H_follows_the_horizon():
    cfg = plan_config(_ckpt_cfg("pusht"), ["planner=cem", "planner.horizon=7"])
    assert cfg.eval.goal_H == 7


@pytest.mark.parametrize("planner", ["cem", "gd"])
def test_open_loop_goal_H_mismatch_is_a_config_error(planner):
    with pytest.raises(ConfigError, match=r"eval.goal_H=10 != planner.horizon=5"):
        plan_config(_ckpt_cfg("pusht"), [f"planner={planner}", "eval.goal_H=10"])
    # the same with an MPC planner is fine (it replans), and so is a matching open-loop horizon
    assert plan_config(_ckpt_cfg("pusht"), ["eval.goal_H=10"]).eval.goal_H == 10
    ok = plan_config(_ckpt_cfg("pusht"), [f"planner={planner}", "eval.goal_H=10", "planner.horizon=10"])
    assert ok.eval.goal_H == ok.planner.horizon == 10


def test_open_loop_plan_reaches_a_dset_goal_H_steps_ahead(tmp_path):
    """An open-loop CEM with horizon 2 gets dset goals 2 model steps (10 env steps) ahead, and executes them."""
    from dinowm_core.evaluation.loop import evaluate, targets_for_seed

    data = make_wall_dataset(tmp_path)
    cfg = tiny_cfg("planner=cem", "planner.horizon=2", "eval.goal_source=dset", "eval.n_evals=2",
                   "eval.budget=50", "eval.seeds=[1]", f"data.path={data}", "data.split_ratio=0.5")  # fmt: skip
    result = evaluate(tiny_wm(cfg, data), cfg)
    assert result.protocol["goal_H"] == 2
    assert [m.env_steps for m in result.per_seed[1]] == [10, 10]
    from dinowm_core.data.windows import build_datasets
    from dinowm_core.envs.base import make_env

    targets = targets_for_seed(cfg, make_env("wall", img_size=64), 1, build_datasets(cfg)[3])
    assert all(len(t.gt_actions) == 10 for t in targets)
    bad = tiny_cfg("planner=cem", "planner.horizon=2", "eval.goal_H=5", "eval.goal_source=dset",
                   f"data.path={data}")  # fmt: skip
    with pytest.raises(ValueError, match="goal_H"):
        evaluate(tiny_wm(bad, data), bad)


# ---- the CLI uses the presets -----------------------------------------------------------------------
def test_cli_plan_applies_the_env_preset(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert "planner.cem.opt_steps=2" in EVAL_TINY  # the checkpoint's own value, replaced by the preset's 10
    ckpt = str(tiny_checkpoint(tmp_path, tiny_cfg()))
    res = CliRunner().invoke(app, ["plan", ckpt, "planner.objective.alpha=0.5", "planner.cem.num_samples=4",
                                   "planner.cem.topk=2", "n_evals=1", "budget=5", "seeds=[0]", "--json",
                                   "--no-ray", "--out", str(tmp_path / "out")])  # fmt: skip
    assert res.exit_code == 0, res.output
    proto = json.loads(res.stdout)["protocol"]
    assert proto["planner"]["cem"]["opt_steps"] == 10  # wall preset
    assert proto["planner"]["objective"]["alpha"] == 0.5  # command line
    assert proto["goal_source"] == "random_state" and proto["goal_H"] == 5

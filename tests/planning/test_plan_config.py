"""Planner config: no dead MPC keys, n_taken_actions bounded by the horizon, legacy checkpoint configs load."""

from __future__ import annotations

import json
import logging

import pytest

from dinowm_core import load_config
from dinowm_core.config import ConfigError
from dinowm_core.planning import make_planner
from dinowm_core.training.checkpoint import CheckpointError, load_config_from_checkpoint
from tests.conftest import TINY
from tests.planning.plan_helpers import IntegratorWM


@pytest.mark.parametrize("preset", ["mpc_cem", "mpc_gd"])
def test_max_iter_is_gone_from_schema_and_presets(preset):
    cfg = load_config([*TINY, f"planner={preset}"])
    assert "max_iter" not in cfg.planner.mpc.model_dump()
    with pytest.raises(ConfigError, match=r"planner\.mpc\.max_iter: unknown key"):
        load_config([*TINY, f"planner={preset}", "planner.mpc.max_iter=3"])


def test_n_taken_actions_above_horizon_is_a_config_error():
    with pytest.raises(ConfigError, match=r"planner\.mpc\.n_taken_actions \(5\).*planner\.horizon \(3\)"):
        load_config([*TINY, "planner=mpc_cem", "planner.horizon=3"])
    cfg = load_config([*TINY, "planner=mpc_cem", "planner.horizon=3", "planner.mpc.n_taken_actions=3"])
    assert make_planner(cfg.planner, IntegratorWM(3)).n_execute == 3
    # open-loop planners never execute in chunks: the MPC section's default does not constrain them
    assert load_config([*TINY, "planner=cem", "planner.horizon=3"]).planner.horizon == 3


def test_a_shorter_horizon_is_checked_against_n_taken_not_clamped():
    planner = load_config([*TINY, "planner=mpc_cem"]).planner  # n_taken_actions 5
    with pytest.raises(ValueError, match="n_taken_actions"):
        make_planner(planner.model_copy(update={"horizon": 3}), IntegratorWM(3))


def _write_ckpt_config(tmp_path, max_iter):
    data = json.loads(load_config([*TINY, "planner=mpc_cem"]).to_json())
    data["planner"]["mpc"]["max_iter"] = max_iter
    (tmp_path / "config.json").write_text(json.dumps(data))
    return tmp_path


def test_checkpoint_config_with_legacy_max_iter_null_still_loads(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dinowm_core.training.checkpoint"):
        cfg = load_config_from_checkpoint(_write_ckpt_config(tmp_path, None))
    assert cfg.planner.mpc.n_taken_actions == 5
    assert any("legacy planner.mpc.max_iter" in r.getMessage() for r in caplog.records)


def test_checkpoint_config_with_a_max_iter_value_is_refused(tmp_path):
    # only the value every old checkpoint carries (null, never read) is dropped; a real cap is not silently lost
    with pytest.raises(CheckpointError, match=r"planner\.mpc\.max_iter: unknown key"):
        load_config_from_checkpoint(_write_ckpt_config(tmp_path, 3))

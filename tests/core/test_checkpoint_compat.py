"""Checkpoints written before the job settings (``ray``, ``mlflow``) left the model config still load, and
checkpoints written now no longer record them (golden artifact: ``tests/fixtures/v1/ckpt_v1``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinowm_core import ConfigError, apply_overrides, load_world_model, save_world_model
from dinowm_core.training.checkpoint import load_config_from_checkpoint

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1" / "ckpt_v1"
JOB_SECTIONS = {"ray", "mlflow"}


def test_v1_fixture_still_carries_the_legacy_sections():
    assert set(json.loads((V1 / "config.json").read_text())) >= JOB_SECTIONS  # else this file tests nothing


def test_v1_config_loads_without_job_sections(caplog):
    with caplog.at_level(logging.DEBUG, logger="dinowm_core.training.checkpoint"):
        cfg = load_config_from_checkpoint(V1)
    assert not JOB_SECTIONS & set(cfg.model_dump())
    assert (cfg.env.name, cfg.encoder.name, cfg.img_size, cfg.num_hist) == ("wall", "dinov2_tiny", 64, 3)
    assert any("legacy job sections" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_v1_world_model_loads_the_stored_weights_exactly():
    wm = load_world_model(V1)
    state = wm.state_dict()
    stored = load_file(V1 / "model.safetensors")
    assert stored and not any(k.startswith("encoder.") for k in stored)
    for key, value in stored.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_user_job_keys_on_a_loaded_config_are_still_unknown():
    cfg = load_config_from_checkpoint(V1)
    with pytest.raises(ConfigError, match="ray: unknown key"):
        apply_overrides(cfg, ["ray.num_workers=2"])


def test_a_checkpoint_saved_now_has_no_job_sections_and_round_trips(tmp_path):
    wm = load_world_model(V1)
    path = save_world_model(wm, tmp_path / "ckpt")
    written = json.loads((path / "config.json").read_text())
    assert not JOB_SECTIONS & set(written)
    again = load_world_model(path)
    assert again.cfg == wm.cfg
    assert json.loads(again.cfg.to_json()) == written
    assert again.normalization == wm.normalization
    a, b = wm.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

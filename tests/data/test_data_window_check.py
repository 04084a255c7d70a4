"""check_compatible's window count: from the manifest alone, exactly as build_datasets slices the splits."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from dinowm_core.data.store import DatasetError, read_manifest
from dinowm_core.data.windows import build_datasets, check_compatible, num_windows, split_for, window_steps
from dinowm_core.presets import load_config


def _cfg(path, *overrides):
    return load_config(["env=wall", f"data.path={path}", "img_size=16", *overrides])


def test_window_count_from_the_manifest_equals_the_built_datasets(make_store):
    path, _ = make_store([3, 5, 6, 7, 9, 11, 13, 4], per_shard=4)
    manifest = read_manifest(path)
    lengths = manifest["episode_lengths"]
    for overrides in (["frameskip=2", "num_hist=2"], ["frameskip=1", "num_hist=1", "data.split_ratio=0.5"],
                      ["frameskip=3", "num_hist=1", "data.n_rollout=5", "data.split_seed=3"]):  # fmt: skip
        cfg = _cfg(path, *overrides)
        tr, va, _, _ = build_datasets(cfg)
        train, val = split_for(len(lengths), None, cfg)
        assert num_windows([lengths[e] for e in train], window_steps(cfg)) == len(tr) > 0
        assert num_windows([lengths[e] for e in val], window_steps(cfg)) == len(va)
        check_compatible(manifest, cfg, str(path))


def test_episodes_shorter_than_a_window_fail_with_what_the_window_needs(make_store):
    path, _ = make_store([6] * 10)
    manifest = read_manifest(path)
    check_compatible(manifest, _cfg(path, "frameskip=3", "num_hist=1"), str(path))  # exactly one window each
    msg = (f"{path}: no train window: the 9 train episodes have at most 6 steps; one training window needs "
           "(num_hist + num_pred) * frameskip = (2 + 1) * 3 = 9 steps: generate longer episodes (--steps) or lower "
           "frameskip/num_hist")  # fmt: skip
    with pytest.raises(DatasetError, match=re.escape(msg)):
        check_compatible(manifest, _cfg(path, "frameskip=3", "num_hist=2"), str(path))
    check_compatible(manifest, _cfg(path, "frameskip=3", "num_hist=2"), str(path), windows=False)


def test_a_val_split_without_a_window_fails(make_store):
    path, _ = make_store([10, 10, 4], extra={"splits": {"train": [0, 1], "val": [2]}})
    manifest = read_manifest(path)
    with pytest.raises(DatasetError, match="no val window: the 1 val episodes have at most 4 steps"):
        check_compatible(manifest, _cfg(path, "frameskip=2", "num_hist=2"), str(path))
    path, _ = make_store([10, 10], name="noval", extra={"splits": {"train": [0, 1], "val": []}})
    check_compatible(read_manifest(path), _cfg(path, "frameskip=2", "num_hist=2"), str(path))  # no validation


def test_an_empty_train_split_fails(make_store):
    path, _ = make_store([30])
    with pytest.raises(DatasetError, match=re.escape("int(data.split_ratio * episodes) = int(0.9 * 1) = 0")):
        check_compatible(read_manifest(path), _cfg(path, "frameskip=1", "num_hist=1"), str(path))
    check_compatible(
        read_manifest(path), _cfg(path, "frameskip=1", "num_hist=1", "data.split_ratio=1"), str(path)
    )


def test_generate_warns_when_steps_are_shorter_than_the_default_window(tmp_path):
    pytest.importorskip("dinowm_core.envs.wall", reason="the wall env has not landed")
    from ray_jobs.cli import app

    out = tmp_path / "w"
    r = CliRunner().invoke(app, ["data", "generate", "--env", "wall", "--episodes", "1", "--steps", "1", "--out",
                                 str(out), "--img-size", "16", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "warning: --steps 1: with the wall defaults one training window needs (num_hist + num_pred) * " \
           "frameskip = (3 + 1) * 5 = 20 steps; these episodes fit no training config" in r.output  # fmt: skip

"""`dinowm data ...` through typer's CliRunner: generate, info, verify, import, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ray_jobs.cli import app

runner = CliRunner()


def test_generate_info_verify(tmp_path):
    pytest.importorskip("dinowm_core.envs.wall", reason="the wall env has not landed")
    out = tmp_path / "wall"
    r = runner.invoke(app, ["data", "generate", "--env", "wall", "--episodes", "2", "--steps", "8", "--out", str(out),
                            "--img-size", "16", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "info", str(out)])
    assert r.exit_code == 0 and "episodes     2  steps 16" in r.output and "wall" in r.output
    r = runner.invoke(app, ["data", "info", str(out), "--json"])
    assert json.loads(r.stdout)["num_episodes"] == 2
    assert runner.invoke(app, ["data", "verify", str(out)]).exit_code == 0
    shard = out / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x10
    shard.write_bytes(bytes(data))
    r = runner.invoke(app, ["data", "verify", str(out)])
    assert r.exit_code == 1 and "shard-00000.arrow" in r.output


def test_bad_input_exits_2_with_one_line(tmp_path):
    out = tmp_path / "x"
    r = runner.invoke(
        app, ["data", "generate", "--env", "nope", "--episodes", "1", "--steps", "2", "--out", str(out)]
    )
    assert r.exit_code == 2 and "unknown env 'nope'" in r.output
    r = runner.invoke(app, ["data", "generate", "--env", "wall", "--episodes", "1", "--steps", "2", "--out", str(out),
                            "--policy", "bogus"])  # fmt: skip
    assert r.exit_code == 2 and "unknown policy" in r.output
    r = runner.invoke(app, ["data", "generate", "--env", "wall", "--episodes", "1", "--steps", "2", "--out", str(out),
                            "--policy", "pusht_push"])  # fmt: skip
    assert r.exit_code == 2 and r.output.startswith("error: policy 'pusht_push' supports envs pusht, not")
    assert not out.exists() and not list(tmp_path.iterdir())
    r = runner.invoke(app, ["data", "info", str(tmp_path / "missing")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no such dataset" in r.output
    r = runner.invoke(
        app, ["data", "import-dino-wm", "--env", "wall", str(tmp_path / "nosrc"), "--out", str(out)]
    )
    assert r.exit_code == 2 and "no such directory" in r.output and not out.exists()


def test_import_via_cli(tmp_path):
    src = tmp_path / "wall_single"
    (src / "obses").mkdir(parents=True)
    torch.save(torch.randn(1, 4, 2), src / "states.pth")
    torch.save(torch.randn(1, 4, 2), src / "actions.pth")
    torch.save(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), src / "obses" / "episode_000.pth")
    out = tmp_path / "out"
    r = runner.invoke(app, ["data", "import-dino-wm", "--env", "wall", str(src), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["num_steps"] == 4
    r = runner.invoke(app, ["data", "import-dino-wm", "--env", "wall", str(src), "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    assert np.isfinite(
        json.loads((out / "manifest.json").read_text())["normalization"]["action"]["std"]
    ).all()


def test_verify_exits_1_for_a_damaged_dataset_and_2_for_a_usage_error(make_store, tmp_path):
    path, _ = make_store([6, 6])
    r = runner.invoke(app, ["data", "verify", str(path)])
    assert r.exit_code == 0 and r.output == f"ok: {path}\n"
    manifest = path / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])  # truncated manifest
    r = runner.invoke(app, ["data", "verify", str(path)])
    assert r.exit_code == 1 and r.output.startswith(f"problem: {manifest}: unreadable"), r.output
    manifest.write_text(json.dumps({**json.loads(text), "files": None}))  # parses, but lacks what it lists
    r = runner.invoke(app, ["data", "verify", str(path)])
    assert r.exit_code == 1 and r.output.startswith(f"problem: {manifest}: malformed"), r.output
    manifest.unlink()
    r = runner.invoke(app, ["data", "verify", str(path)])
    assert r.exit_code == 1 and r.output.startswith(f"problem: {manifest}: missing"), r.output
    for not_a_dir in (tmp_path / "missing", manifest.with_name("episodes.arrow")):
        r = runner.invoke(app, ["data", "verify", str(not_a_dir)])
        assert r.exit_code == 2 and r.output == f"error: {not_a_dir}: no such dataset directory\n", r.output

"""Ctrl-C during `dinowm data generate`: one line that says how to resume, exit 130, no worker tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generate(out: Path, **popen) -> subprocess.Popen:
    # One episode per shard: shards finish early and often, so the interrupt lands mid-generation.
    cmd = [sys.executable, "-m", "ray_jobs.cli", "data", "generate", "--env", "wall", "--episodes", "40",
           "--steps", "40", "--episodes-per-shard", "1", "--img-size", "16", "--workers", "2", "--out", str(out),
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_keeps_shards_says_how_to_resume_and_the_rerun_resumes(tmp_path):
    pytest.importorskip("dinowm_core.envs.wall", reason="the wall env has not landed")
    out = tmp_path / "wall"
    part = tmp_path / "wall.partial"
    # A new session, signalled as a group: a terminal's Ctrl-C reaches the pool's workers too.
    proc = _generate(out, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(part.glob("shard-*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "generation finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SpawnPoolWorker" not in err, err
    kept = sorted(part.glob("shard-*.json"))
    hint = f"interrupted: {len(kept)}/40 shards are kept in {part}; rerun the same command to resume"
    assert err.strip() == hint
    assert not out.exists() and 0 < len(kept) < 40
    mtimes = {f.stem: (part / f"{f.stem}.arrow").stat().st_mtime_ns for f in kept}

    rerun = _generate(out)
    stdout, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert stdout.strip() == f"wrote {out}" and not part.exists()
    assert json.loads((out / "manifest.json").read_text())["num_episodes"] == 40
    assert {k: (out / f"{k}.arrow").stat().st_mtime_ns for k in mtimes} == mtimes  # resumed, not redone

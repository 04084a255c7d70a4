"""The README's main job, shrunk: data -> Ray Train + MLflow -> planning with Ray env actors, via the CLI."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.sockets import SocketWatch

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


def test_quickstart_quick_runs_every_stage(tmp_path):
    out = tmp_path / "qs"
    tmp = tempfile.mkdtemp(prefix="dwq", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": tmp}
    for key in ("RAY_ADDRESS", "RAY_TMPDIR"):
        env.pop(key, None)
    dinowm = Path(sys.executable).parent / "dinowm"
    try:
        with SocketWatch(tmp) as watch:  # the quickstart's embedded cluster, all its processes
            done = subprocess.run([str(dinowm), "quickstart", "--quick", "-o", str(out)], env=env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
        left = os.listdir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert watch.sockets and not watch.not_loopback(), [str(s) for s in watch.not_loopback()]
    assert left == []  # the cluster's session, staging and caches are gone with it
    for stage in ("[1/3] data", "[2/3] training on Ray Train", "[3/3] planning"):
        assert stage in done.stdout
    assert "Reporting training result" not in done.stdout + done.stderr  # Ray's per-report dump is silenced
    assert (out / "data" / "manifest.json").is_file()
    assert (out / "mlflow" / "mlflow.db").is_file()
    for policy in ("planner", "random"):
        results = json.loads((out / "plan" / policy / "results.json").read_text())
        assert results["pooled"]["n"] == 4 and 0.0 <= results["pooled"]["success_rate"] <= 1.0
    assert list((out / "plan" / "planner" / "videos").glob("*.mp4"))
    ckpt = next(line.split("checkpoint", 1)[1].split()[0] for line in done.stdout.splitlines()
                if line.strip().startswith("checkpoint"))  # fmt: skip
    assert (Path(ckpt) / "model.safetensors").is_file()

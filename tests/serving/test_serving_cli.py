"""``dinowm serve``: bad settings fail before anything starts; the real command serves, and Ctrl-C stops it
cleanly (exit 0, its embedded cluster gone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ray_jobs.cli import app
from tests.ray import procs
from tests.serving.conftest import free_port, obs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["bogus_key=1"], "bogus_key"),
        (["request_timeout_s=0"], "request_timeout_s"),
        (["--max-batch-size", "0"], "max-batch-size"),
        (["autoscaling.max_replicas=zero"], "autoscaling.max_replicas"),
        (["ray.no_such=1"], "no_such"),
    ],
)
def test_bad_settings_fail_before_anything_starts(tiny_ckpt, extra, message):
    r = CliRunner().invoke(app, ["serve", str(tiny_ckpt), *extra])
    assert r.exit_code == 2 and message in r.output, r.output


def test_a_busy_port_fails_before_anything_starts(tiny_ckpt):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = CliRunner().invoke(app, ["serve", str(tiny_ckpt), "--port", str(s.getsockname()[1])])
    assert r.exit_code == 2 and "cannot listen" in r.output


@pytest.mark.ray
@pytest.mark.serving
@pytest.mark.slow
def test_serve_answers_then_ctrl_c_exits_0(tiny_ckpt, tmp_path):
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="dws-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "ray_jobs.cli", "serve", str(tiny_ckpt), "--port", str(port), "--replicas", "1",
           "--max-batch-size", "4", "--batch-wait-s", "0.005", "session_ttl_s=30"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while f"API docs: {url}/docs" not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no URL printed"
            time.sleep(0.5)
        assert httpx.get(f"{url}/v1/models", timeout=30).json()["source"] == str(tiny_ckpt)
        r = httpx.post(f"{url}/v1/plan", json={"obs": obs(2, 0), "goal": obs(2, 1)}, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{url}/v1/sessions", json={"goal": obs(2, 1)}, timeout=60)
        assert r.json()["expires_in_s"] == 30  # an app setting from the command line
        cluster = procs.descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert not procs.wait_gone(cluster, timeout_s=20)
        assert not (Path(ray_tmp) / "dwm-ray").exists()  # the session directory is removed
    finally:
        if proc.poll() is None:
            pids = procs.descendants(proc.pid)
            proc.kill()
            proc.wait()
            procs.stop(pids)
        log.close()
        subprocess.run(["rm", "-rf", ray_tmp], check=False)

"""`ray job submit` of a tiny training job and a one-trial sweep to a `ray start --head` cluster with token
authentication on.

The head gets its own temp dir, free ports and its own token file (``RAY_AUTH_TOKEN_PATH``), so it never touches
``~/.ray/auth_token`` or another cluster. It is stopped by PID: ``ray stop`` would kill every Ray process of the user
(including the session cluster of the other tests).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ray import procs
from tests.ray.conftest import train_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, deadline: float) -> None:
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # 401 without a token: the dashboard is up (and enforcing auth)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(url) from None
            time.sleep(0.5)


@pytest.fixture(scope="module")
def head_cluster(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("head")
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        # the job's entrypoint runs on the head's PATH: make it this interpreter's environment (CI does not
        # activate the virtualenv)
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    temp_dir = tempfile.mkdtemp(prefix="dwh-", dir="/tmp")
    dash = _free_port()
    cmd = [RAY, "start", "--head", "--block", "--temp-dir", temp_dir, "--port", str(_free_port()),
           "--dashboard-port", str(dash), "--dashboard-host", "127.0.0.1", "--ray-client-server-port",
           str(_free_port()), "--num-cpus", "2", "--object-store-memory", str(150 * 1024**2),
           "--include-dashboard", "true", "--disable-usage-stats",
           # Every default port moved too: another Ray cluster on this machine (the test session's) already
           # holds them, and a job agent that cannot bind its port never registers ("No available agent").
           "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
           "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
           "--node-manager-port", str(_free_port()), "--object-manager-port", str(_free_port())]  # fmt: skip
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - closed at teardown
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{dash}/api/version", time.monotonic() + 90)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        # Stop exactly the processes this head started: the `ray start` monitor first (so it does not
        # react to its children exiting), then gcs/raylet/dashboard/workers, by PID.
        pids = procs.descendants(head.pid)
        head.kill()
        head.wait()
        procs.stop(pids)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_trains_to_completion(head_cluster, wall_dataset, tmp_path):
    address, env = head_cluster
    out = tmp_path / "out"
    args = train_overrides(wall_dataset, out, "training.epochs=2", "ray.num_workers=1")
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           sys.executable, "-m", "ray_jobs.train", *args]  # fmt: skip
    done = _submit(cmd, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch 2/2 step 8/8" in done.stdout  # workers' progress lines reach the submitting client
    line = next(x for x in done.stdout.splitlines() if '{"run_name"' in x)  # the driver's JSON summary
    outcome = json.loads(line[line.index("{") :])
    assert outcome["metrics"]["step"] == 8
    assert (Path(outcome["checkpoint"]) / "model.safetensors").is_file()


def _submit(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    # The dashboard answers before the node's job agent registers (slow on a loaded 2-core machine); that
    # refusal means nothing ran yet, so resubmitting is safe. Polling an external server's readiness.
    deadline = time.monotonic() + 240
    while True:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


def test_job_submit_runs_a_sweep(head_cluster, wall_dataset, tmp_path):
    address, env = head_cluster
    space = tmp_path / "one.yaml"
    space.write_text(
        "kind: train\nscheduler: {name: fifo}\nparams:\n  training.predictor_lr: {grid: [1.0e-3]}\n"
    )
    args = train_overrides(wall_dataset, tmp_path / "out", "training.epochs=1", "ray.num_workers=1")
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           sys.executable, "-m", "ray_jobs.tune", str(space), *args, "--json"]  # fmt: skip
    done = _submit(cmd, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if '{"sweep"' in x)  # the driver's JSON summary
    outcome = json.loads(line[line.index("{") :])
    assert outcome["best_trial"] and math.isfinite(outcome["best_metric"])
    assert (Path(outcome["best_dir"]) / "model.safetensors").is_file()


def test_job_submit_without_token_is_refused(head_cluster):
    address, env = head_cluster
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["RAY_AUTH_MODE"] = "disabled"
    done = subprocess.run([RAY, "job", "list", "--address", address], env=no_token, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0

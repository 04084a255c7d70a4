"""The embedded cluster of ``ray_jobs.cluster.connect``: loopback only, quiet, and gone with its process.

Each test starts it in a fresh driver subprocess whose ``$TMPDIR`` is a new short directory: that directory is
both where the cluster's files go and the marker that finds its processes (they all inherit the environment).
The session cluster of the other Ray tests is only joined, never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.ray import procs
from tests.sockets import SocketWatch

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVERS = ("gcs_server", "raylet", "dashboard.py", "DashboardAgent", "RuntimeEnvAgent")

# Starts (or joins) a cluster, runs a task, says "ready" and then ends as told on stdin: "exit", "error" (an
# exception), "disconnect" (explicitly, then exit) or nothing (the test sends SIGINT).
DRIVER = r"""
import os, sys
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
from ray_jobs import cluster
from ray_jobs.job_config import RayConfig

started = cluster.connect(RayConfig())
env = ray.get(ray.remote(lambda: dict(os.environ)).remote())
print("ready", started, ray._private.worker._global_node.get_session_dir_path(),
      get_authentication_mode() == AuthenticationMode.TOKEN, env.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"),
      flush=True)
how = sys.stdin.readline().strip()
if how == "error":
    raise RuntimeError("the command failed")
if how == "disconnect":
    cluster.disconnect()
"""


def _env(tmp: str, join: str | None = None) -> dict[str, str]:
    """The driver's environment: an embedded cluster with Ray's default auth mode, or ``join`` that address."""
    drop = ("RAY_ADDRESS", "RAY_TMPDIR") if join else ("RAY_ADDRESS", "RAY_TMPDIR", "RAY_AUTH_MODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(TMPDIR=tmp, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    if join:
        env["RAY_ADDRESS"] = join
    return env


class Driver:
    """The driver subprocess; whatever of its process tree is left when the test ends is stopped by PID."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)  # fmt: skip
        self.tree: set[int] = set()

    def ready(self) -> list[str]:
        line = self.proc.stdout.readline()
        self.tree = {self.proc.pid, *procs.descendants(self.proc.pid)}
        assert line.startswith("ready"), line + self.proc.stderr.read()[-3000:]
        return line.split()

    def end(self, how: str) -> tuple[str, str]:
        if how == "interrupt":  # Ctrl-C: SIGINT to the whole foreground process group
            os.killpg(self.proc.pid, signal.SIGINT)
            how = ""
        out, err = self.proc.communicate(how + "\n", timeout=120)
        return out, err

    def stop_leftovers(self) -> list[str]:
        """Ray's processes exit shortly after their driver: what still runs 15 s later is stopped and named."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        left = procs.wait_gone(sorted(self.tree), timeout_s=15)
        names = [procs.name(p) for p in left]
        procs.stop(left)
        return names


@pytest.fixture
def short_tmp():
    tmp = tempfile.mkdtemp(prefix="dw", dir="/tmp")  # Ray's socket paths must stay < 108 bytes
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_embedded_cluster_listens_on_loopback_only_and_keeps_token_auth_quietly(short_tmp):
    with SocketWatch(short_tmp) as watch:
        driver = Driver(_env(short_tmp))
        try:
            _, started, _, token_auth, preemption_watcher = driver.ready()
            # The node's agents start a few seconds after the driver is connected.
            deadline = time.monotonic() + 60
            while not all(s in watch.owners() for s in SERVERS) and time.monotonic() < deadline:
                time.sleep(0.5)
            watch.poll()
            _, err = driver.end("exit")
        finally:
            driver.stop_leftovers()
    assert driver.proc.returncode == 0, err[-3000:]
    for server in SERVERS:
        assert server in watch.owners(), (
            f"no listening socket of {server} seen: {sorted(map(str, watch.sockets))}"
        )
    assert watch.not_loopback() == [], "\n".join(map(str, watch.not_loopback()))
    # What used to print on every run without telling the user anything.
    assert "Token authentication is enabled" not in err
    assert preemption_watcher == "0"  # Ray Train's drain watcher: a one-machine cluster is never drained
    assert started == "True" and token_auth == "True"


@pytest.mark.parametrize("how", ["exit", "error", "interrupt", "disconnect"])
def test_embedded_cluster_leaves_the_temp_dir_as_it_found_it(short_tmp, how):
    (Path(short_tmp) / "mine.txt").write_text("not Ray's")
    driver = Driver(_env(short_tmp))
    try:
        _, _, session, *_ = driver.ready()
        assert Path(session).is_relative_to(Path(short_tmp) / "dwm-ray")
        _, err = driver.end(how)
    finally:
        left = driver.stop_leftovers()
    assert driver.proc.returncode == (0 if how in ("exit", "disconnect") else 1), err[-3000:]
    assert ("KeyboardInterrupt" in err) == (how == "interrupt")
    assert os.listdir(short_tmp) == ["mine.txt"]
    assert left == []


def test_a_joined_cluster_is_left_alone(ray_cluster, short_tmp):
    address = ray_cluster.get_runtime_context().gcs_address
    session = Path(ray_cluster._private.worker._global_node.get_session_dir_path())
    driver = Driver(_env(short_tmp, join=address))
    try:
        _, started, joined, *_ = driver.ready()
        _, err = driver.end("disconnect")
    finally:
        driver.stop_leftovers()
    assert driver.proc.returncode == 0, err[-3000:]
    assert started == "False" and Path(joined) == session
    assert session.is_dir() and (session.parent / "session_latest").exists()
    assert ray_cluster.get(ray_cluster.remote(lambda: 1).remote()) == 1

"""The embedded cluster of ``ray_jobs.cluster.connect`` listens on the loopback interface only.

Each test starts it in a fresh driver subprocess whose ``$TMPDIR`` is a new short directory: that directory is
the marker that finds the cluster's processes (they all inherit the environment).
"""

from __future__ import annotations

import os
import shutil
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

# Starts a cluster, runs a task, says "ready" and exits when told on stdin.
DRIVER = r"""
import sys
import ray
from ray_jobs import cluster
from ray_jobs.job_config import RayConfig

started = cluster.connect(RayConfig())
ray.get(ray.remote(lambda: 1).remote())
print("ready", started, ray._private.worker._global_node.get_session_dir_path(), flush=True)
how = sys.stdin.readline().strip()
"""


def _env(tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    env.update(TMPDIR=tmp, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
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


def test_embedded_cluster_listens_on_loopback_only(short_tmp):
    with SocketWatch(short_tmp) as watch:
        driver = Driver(_env(short_tmp))
        try:
            driver.ready()
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

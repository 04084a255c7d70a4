"""Several Ray nodes on this machine, each a ``ray start --block`` of its own: a rehearsal of a multi-node cluster.

    cluster = LocalCluster(root, env={...})      # root: a short directory; shared token, node-local TMPDIRs
    head = cluster.start_head(num_cpus=1, resources={"head_node": 1})
    worker = cluster.start_worker(num_cpus=1, resources={"worker_node": 1})
    cluster.wait_nodes(2)                        # polls the dashboard's state API
    worker.kill()                                # a node crash: SIGKILL of everything that node started
    cluster.stop()                               # every node, by PID (never `ray stop`: it ends every Ray of the user)

Every node has its own temp dir, free ports (the defaults would collide between nodes of one machine, or with
another cluster here) and ``TMPDIR`` (Train workers stage checkpoints in node-local scratch, as on real nodes).
Every node lives on 127.0.0.1: the head runs in Ray's local-only mode (so ``--node-ip-address 127.0.0.1`` is kept,
not replaced by the routable address), and a worker that joins ``127.0.0.1:<port>`` takes the address it reaches
the head from, 127.0.0.1. Token authentication stays on with a token file of the cluster's own.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ray import procs

RAY = str(Path(sys.executable).parent / "ray")
REPO = Path(__file__).resolve().parents[2]

# A crashed node is declared dead after health_check_failure_threshold missed checks: seconds, not the default ~30 s.
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Every per-node port Ray would otherwise take at a fixed default (or that a second node must not share)."""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--node-manager-port", "--object-manager-port")  # fmt: skip
    return [arg for flag in flags for arg in (flag, str(free_port()))]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    _log_file: Any = field(repr=False)

    def pids(self) -> list[int]:
        return [self.proc.pid, *procs.descendants(self.proc.pid)]

    def kill(self) -> None:
        """A crash: SIGKILL of the node's whole process tree (raylet, its workers, agents), no goodbye to the GCS."""
        import signal

        pids = self.pids()
        for pid in pids:
            procs._signal(pid, signal.SIGKILL)
        self.proc.wait()
        procs.wait_gone(pids, timeout_s=10)
        self._log_file.close()

    def stop(self) -> list[int]:
        """Stop what this node started: the ``ray start`` monitor first (so it does not react to its children
        exiting), then raylet, agents and workers (SIGTERM, then SIGKILL) -> the PIDs that needed SIGKILL."""
        pids = procs.descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait()
        stubborn = procs.stop(pids)
        self._log_file.close()
        return stubborn


class LocalCluster:
    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.token = self.root / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token),
            "RAY_USAGE_STATS_ENABLED": "0",
            # jobs' entrypoints run on the head's PATH, replicas and workers import this checkout (on a real
            # cluster: the project installed on every node, or a shared file system)
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "GLOO_SOCKET_IFNAME": "lo",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            **FAST_NODE_DEATH,
            **(env or {}),
        }
        self.nodes: list[Node] = []
        self.gcs_port = self.dashboard_port = 0

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, args: list[str], env: dict[str, str], local_join: bool = False) -> Node:
        temp_dir = self.root / name  # short: Ray's socket paths must stay < 108 bytes
        scratch = self.root / f"{name}-tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{name}.log"
        log = open(log_path, "w")  # noqa: SIM115 - closed by stop() / kill()
        command = [sys.executable, "-m", "tests.ray.ray_start_local"] if local_join else [RAY]
        proc = subprocess.Popen([*command, "start", "--block", "--temp-dir", str(temp_dir), "--disable-usage-stats",
                                 *args, *node_ports()], env={**self.env, "TMPDIR": str(scratch), **env},
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        node = Node(name, proc, temp_dir, log_path, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int, resources: dict[str, float], object_store_mb: int = 100) -> Node:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        args = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
                "--dashboard-port", str(self.dashboard_port), "--dashboard-host", "127.0.0.1",
                "--ray-client-server-port", str(free_port()), "--include-dashboard", "true",
                "--num-cpus", str(num_cpus), "--object-store-memory", str(object_store_mb * 1024**2),
                "--resources", json.dumps(resources)]  # fmt: skip
        return self._start("head", args, {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})

    def start_worker(self, num_cpus: int, resources: dict[str, float], object_store_mb: int = 100,
                     name: str = "worker") -> Node:  # fmt: skip
        args = ["--address", self.gcs_address, "--num-cpus", str(num_cpus),
                "--object-store-memory", str(object_store_mb * 1024**2), "--resources", json.dumps(resources)]  # fmt: skip
        return self._start(name, args, {}, local_join=True)

    def start_pair(self, head: tuple[int, dict[str, float]], worker: tuple[int, dict[str, float]],
                   attempts: int = 2, timeout_s: float = 120) -> None:  # fmt: skip
        """A head and one worker node, each ``(num_cpus, custom resources)``, until both are alive.

        ``ray start`` gives up when its raylet takes more than 30 s to register (seen on a machine under heavy
        load): the pair is then stopped and started again, up to ``attempts`` times.
        """
        for attempt in range(1, attempts + 1):
            self.start_head(num_cpus=head[0], resources=head[1])
            try:
                self.wait_gcs(
                    timeout_s=timeout_s
                )  # the worker joins once the GCS answers, before the dashboard
                self.start_worker(num_cpus=worker[0], resources=worker[1])
                self.wait_nodes(2, timeout_s=timeout_s)
                return
            except TimeoutError:
                if attempt == attempts:
                    raise
                self.stop()
                self.nodes.clear()

    # ---- the dashboard's REST API (what `ray list ...` calls), with the cluster's token -------------------

    def api(self, path: str, timeout: float = 10) -> Any:
        req = urllib.request.Request(self.dashboard + path,
                                     headers={"Authorization": f"Bearer {self.token.read_text().strip()}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def state(self, resource: str, **filters: str) -> list[dict]:
        """``/api/v0/<resource>`` (nodes, actors, ...) with detail, filtered by ``key=value`` equalities."""
        query = "detail=1&limit=10000" + "".join(
            f"&filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in filters.items()
        )
        return self.api(f"/api/v0/{resource}?{query}")["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return self.state("nodes", state="ALIVE")

    def wait_gcs(self, timeout_s: float = 90) -> None:
        """Until the head's GCS accepts connections (what a joining node needs first)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.gcs_port), timeout=2).close()
                return
            except OSError:
                head = self.nodes[0]
                if head.proc.poll() is not None or time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the head's GCS never answered; log: {head.log.read_text()[-1500:]}"
                    ) from None
                time.sleep(0.3)

    def wait_nodes(self, n: int, timeout_s: float = 90) -> list[dict]:
        """Until exactly ``n`` nodes are alive -> those nodes; a TimeoutError names what was seen."""
        deadline, seen = time.monotonic() + timeout_s, None
        while True:
            try:
                nodes = self.alive_nodes()
                if len(nodes) == n:
                    return nodes
                seen = [(x["node_id"][:8], x["resources_total"]) for x in nodes]
            except (OSError, urllib.error.URLError, KeyError, ValueError) as e:  # dashboard not up yet
                seen = repr(e)
            if time.monotonic() > deadline:
                logs = {node.name: node.log.read_text()[-1500:] for node in self.nodes}
                raise TimeoutError(f"{n} alive nodes expected within {timeout_s} s; saw {seen}; logs: {logs}")
            time.sleep(0.5)

    def stop(self) -> list[str]:
        """Stop every node that still runs (workers first, then the head) -> what needed SIGKILL, by name."""
        stubborn = []
        for node in reversed(self.nodes):
            if node.proc.poll() is None or any(procs.alive(p) for p in procs.descendants(node.proc.pid)):
                stubborn += [procs.name(p) for p in node.stop()]
        return stubborn

"""Serving fixtures: the session's Ray cluster, one Serve instance on 127.0.0.1 and a free port, a tiny
checkpoint, and helpers to build observations."""

from __future__ import annotations

import base64
import io
import socket
import time

import numpy as np
import pytest

from tests.ray import conftest as ray_conftest


@pytest.fixture(scope="session")
def ray_cluster():
    """tests/ray's session cluster: the one already running when tests/ray came first, else a new one."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    yield from ray_conftest.ray_cluster.__wrapped__()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_url(ray_cluster) -> str:
    """Serve's HTTP proxy on 127.0.0.1 and a free port; apps are added per test module (serve_app)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """The tiny untrained world model (MPC-CEM with 12 samples, 2 iterations) as a checkpoint directory."""
    from tests.evaluation.eval_helpers import tiny_cfg, tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("serving"), tiny_cfg())


def run_app(args: dict, name: str, route_prefix: str, base_url: str) -> str:
    """Deploy ``build_app(args)`` as app ``name`` under ``route_prefix`` and wait until it answers."""
    import httpx
    from ray import serve

    from serving.app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)
    url = base_url + route_prefix.rstrip("/")
    deadline = time.monotonic() + 60
    while httpx.get(url + "/healthz", timeout=10).status_code != 200:  # the proxy learns routes shortly after
        assert time.monotonic() < deadline, f"{url}/healthz never answered"
        time.sleep(0.2)
    return url


def png_b64(h: int = 64, w: int = 64, channels: int = 3, seed: int = 0) -> str:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def obs(proprio_dim: int, seed: int = 0, **visual) -> dict:
    return {"visual": png_b64(seed=seed, **visual), "proprio": [0.1 * (seed + 1)] * proprio_dim}


def replicas(app: str) -> list:
    """The live replica actors of app ``app``'s ``planner`` deployment."""
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", f"ServeReplica:{app}:planner"), ("state", "=", "ALIVE")])


def wait_replaced(app: str, victim, n: int = 2, timeout_s: float = 120) -> None:
    """Until ``victim`` (a replica actor) is gone and ``n`` replicas of ``app`` run again."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        alive = {a.actor_id for a in replicas(app)}
        status = serve.status().applications[app].deployments["planner"]
        if len(alive) == n and victim.actor_id not in alive and status.replica_states.get("RUNNING") == n:
            return
        assert time.monotonic() < deadline, (alive, status)
        time.sleep(1)

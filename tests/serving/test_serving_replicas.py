"""Two replicas: one MPC session continues whichever replica answers, and a replica that dies is replaced by Serve
while the session goes on (the sessions live in the deployment's store actor, not in a replica)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import obs, replicas, run_app, wait_replaced

pytestmark = [pytest.mark.ray, pytest.mark.serving, pytest.mark.slow]

APP = "replicas"


@pytest.fixture(scope="module")
def app(serve_url, tiny_ckpt):
    from ray import serve

    args = {"checkpoint": str(tiny_ckpt), "replicas": 2, "num_cpus": 0.5, "torch_threads": 1,
            "health_check_period_s": 1.0, "health_check_timeout_s": 10.0}  # fmt: skip
    url = run_app(args, APP, f"/{APP}", serve_url)
    yield url
    serve.delete(APP)


def _act(url: str, sid: str, seed: int) -> httpx.Response:
    """``act`` as a client does it: retried on 5xx and dropped connections (a replica being replaced)."""
    for _ in range(20):
        try:
            r = httpx.post(f"{url}/v1/sessions/{sid}/act", json={"obs": obs(2, seed)}, timeout=60)
            if r.status_code < 500:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"act kept failing: {r.status_code} {r.text}")


def test_a_session_survives_any_replica_and_a_replica_death(app, ray_cluster):

    sid = httpx.post(f"{app}/v1/sessions", json={"goal": obs(2, 1), "seed": 3}, timeout=60).json()[
        "session_id"
    ]
    ids = []
    for k in range(12):
        r = _act(app, sid, k)
        assert r.status_code == 200 and r.json()["step"] == k + 1, r.text
        ids.append(r.headers["x-request-id"])
    logs = Path(ray_cluster._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    answered = {
        f.name for f in logs.glob(f"replica_{APP}_planner_*.log") if any(i in f.read_text() for i in ids)
    }
    assert len(answered) == 2, answered  # both replicas served the one session

    victim = replicas(APP)[0]
    ray_cluster.kill(ray_cluster.get_actor(victim.name, namespace="serve"), no_restart=True)
    steps = [_act(app, sid, k).json()["step"] for k in range(4)]
    assert steps[0] > 12 and steps == sorted(set(steps)), steps  # the session went on

    wait_replaced(APP, victim)
    assert _act(app, sid, 0).status_code == 200

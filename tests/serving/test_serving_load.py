"""A bounded loopback load test: 32 concurrent clients get every plan, batching shows, latencies are recorded; and
a replica process killed during the load is replaced while the clients' requests succeed after retry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import numpy as np
import pytest

from tests.serving.conftest import obs, replicas, run_app, wait_replaced

pytestmark = [pytest.mark.ray, pytest.mark.serving, pytest.mark.slow]

APP = "load"
CLIENTS = 32
PLANNER = {"num_samples": 8, "topk": 2, "opt_steps": 1}


@pytest.fixture(scope="module")
def app(serve_url, tiny_ckpt):
    from ray import serve

    args = {"checkpoint": str(tiny_ckpt), "replicas": 2, "num_cpus": 0.5, "torch_threads": 1,
            "max_batch_size": 32, "batch_wait_s": 0.05, "health_check_period_s": 1.0,
            "health_check_timeout_s": 10.0}  # fmt: skip
    url = run_app(args, APP, f"/{APP}", serve_url)
    yield url
    serve.delete(APP)


async def _load(url: str, requests_per_client: int, during=None) -> tuple[list[float], list[int]]:
    """``CLIENTS`` closed-loop clients; returns every request's latency and served batch size."""
    from serving.client import AsyncPlanningClient

    latencies: list[float] = []
    batches: list[int] = []

    async def client(k: int) -> None:
        async with AsyncPlanningClient(url, retries=8, backoff_s=0.5, timeout_s=120) as c:
            for i in range(requests_per_client):
                seed = k * 1000 + i
                t0 = time.perf_counter()
                o, g = obs(2, seed), obs(2, seed + 1)
                r = await c.plan(_arrays(o), _arrays(g), planner=PLANNER, seed=seed)
                latencies.append(time.perf_counter() - t0)
                batches.append(r.batch_size)

    tasks = [asyncio.create_task(client(k)) for k in range(CLIENTS)]
    if during is not None:
        await during()
    await asyncio.gather(*tasks)
    return latencies, batches


def _arrays(body: dict) -> dict:
    """A request body's observation back as the arrays a client holds."""
    from serving.client import decode_visual

    return {"visual": decode_visual(body["visual"]), "proprio": np.asarray(body["proprio"], dtype=np.float32)}


def test_32_clients_are_all_served_in_batches(app, record_property):
    latencies, batches = asyncio.run(_load(app, requests_per_client=3))
    assert len(latencies) == CLIENTS * 3
    p50, p99 = np.percentile(latencies, [50, 99])
    record_property("p50_s", round(float(p50), 4))
    record_property("p99_s", round(float(p99), 4))
    print(json.dumps({"clients": CLIENTS, "requests": len(latencies), "p50_s": p50, "p99_s": p99,
                      "mean_batch": float(np.mean(batches))}))  # fmt: skip
    assert np.mean(batches) > 1  # concurrent requests shared planner calls


def test_a_killed_replica_is_replaced_and_requests_succeed_after_retry(app, ray_cluster):

    victim = replicas(APP)[0]

    async def kill_one() -> None:
        await asyncio.sleep(1.0)  # the load is running
        os.kill(victim.pid, signal.SIGKILL)

    latencies, _ = asyncio.run(_load(app, requests_per_client=4, during=kill_one))
    assert len(latencies) == CLIENTS * 4  # every request answered, some after a retry
    wait_replaced(APP, victim)

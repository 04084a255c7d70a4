"""Planning-service HTTP benchmark against a running ``dinowm serve``; prints one JSON line per measurement.

    dinowm serve CKPT --port 8000 &
    python bench/serve_http.py --url http://127.0.0.1:8000 [--requests 20] [--clients 32] [--rounds 4]

* ``serve/plan_latency_s``: sequential ``POST /v1/plan`` (p50, p90; each alone in its batch);
* ``serve/plan_throughput``: ``clients`` concurrent clients, ``rounds`` requests each: requests/s, the mean
  ``batch_size`` the answers report and the mean ``timings.queue_s``.

The planner settings are the checkpoint's (``--planner cem`` plans one open-loop plan per request).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image


def _emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def _png(seed: int, size: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--planner", default="cem")
    a = ap.parse_args()
    headers = (
        {"Authorization": f"Bearer {os.environ['DINOWM_API_KEY']}"} if "DINOWM_API_KEY" in os.environ else {}
    )
    client = httpx.Client(base_url=a.url, headers=headers, timeout=120)
    info = client.get("/v1/models").raise_for_status().json()
    dp, size = info["proprio_dim"], info["img_size"]

    def body(seed: int) -> dict:
        return {"obs": {"visual": _png(seed, size), "proprio": [0.0] * dp},
                "goal": {"visual": _png(seed + 1, size), "proprio": [0.5] * dp},
                "planner": {"name": a.planner}, "seed": seed}  # fmt: skip

    client.post("/v1/plan", json=body(0)).raise_for_status()  # warm-up
    lat = []
    for i in range(a.requests):
        t0 = time.perf_counter()
        client.post("/v1/plan", json=body(i)).raise_for_status()
        lat.append(time.perf_counter() - t0)
    q = np.quantile(lat, [0.5, 0.9])
    _emit(metric="serve/plan_latency_s", p50=round(float(q[0]), 4), p90=round(float(q[1]), 4), n=a.requests)

    bodies = [body(i) for i in range(a.clients)]

    def one_client(i: int) -> list[dict]:
        with httpx.Client(base_url=a.url, headers=headers, timeout=120) as c:
            return [c.post("/v1/plan", json=bodies[i]).raise_for_status().json() for _ in range(a.rounds)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.clients) as pool:
        answers = [r for rs in pool.map(one_client, range(a.clients)) for r in rs]
    wall = time.perf_counter() - t0
    _emit(metric="serve/plan_throughput", clients=a.clients, requests=len(answers),
          req_per_s=round(len(answers) / wall, 2),
          mean_batch_size=round(statistics.mean(r["batch_size"] for r in answers), 2),
          mean_queue_s=round(statistics.mean(r["timings"]["queue_s"] for r in answers), 4),
          mean_plan_s=round(statistics.mean(r["timings"]["plan_s"] for r in answers), 4))  # fmt: skip


if __name__ == "__main__":
    main()

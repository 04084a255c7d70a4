"""Planning service benchmark: plans per second and p50 / p99 latency of ``POST /v1/plan`` seen by clients.

Starts the Serve app in-process on 127.0.0.1 (a tiny untrained model unless ``--ckpt``), then runs ``clients``
concurrent closed-loop clients (each sends its next request when the previous one is answered) for every
setting, with the service's batching on (``max_batch_size`` 32) and off (1). Prints one JSON object per line.

Settings: ``small`` = CEM 32 samples x top 4 x H 5; ``ref`` = CEM 300 x 30 x H 5 (the reference's), 1 client.
Both run ``--opt-steps`` iterations (30, the reference's; 2 with ``--quick``).

    python bench/serve.py --quick                    # CPU smoke run, under a minute
    python bench/serve.py --ckpt CKPT --device cuda --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from serving.client import AsyncPlanningClient, PlanningClient  # noqa: E402

SETTINGS = {
    "small": {"name": "cem", "horizon": 5, "num_samples": 32, "topk": 4},
    "ref": {"name": "cem", "horizon": 5, "num_samples": 300, "topk": 30},
}
TINY = ["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=vqvae_small", "img_size=64", "frameskip=5",
        "num_hist=1"]  # fmt: skip


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def tiny_checkpoint(root: str) -> str:
    import torch

    from dinowm_core import build_world_model, load_config, save_world_model

    torch.manual_seed(0)
    return str(save_world_model(build_world_model(load_config(TINY)).eval(), os.path.join(root, "ckpt")))


def observations(n: int, img_size: int, proprio_dim: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {"visual": rng.integers(0, 256, (img_size, img_size, 3), dtype=np.uint8),
         "proprio": rng.normal(size=proprio_dim)}
        for _ in range(n)
    ]  # fmt: skip


async def load(url: str, planner: dict, clients: int, seconds: float, min_requests: int, obs: list) -> dict:
    """``clients`` closed-loop clients for ``seconds`` (and at least ``min_requests`` each)."""
    lat: list[float] = []
    batch: list[int] = []
    async with AsyncPlanningClient(url, timeout_s=600, max_connections=clients) as client:
        await client.plan(obs[0], obs[1], planner)  # warm-up: compile, allocator, connections
        stop = time.perf_counter() + seconds

        async def one(k: int) -> None:
            i = 0
            while i < min_requests or time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.plan(obs[(k + i) % len(obs)], obs[(k + i + 1) % len(obs)], planner, seed=k)
                lat.append(time.perf_counter() - t0)
                batch.append(r.batch_size)
                i += 1

        t0 = time.perf_counter()
        await asyncio.gather(*[one(k) for k in range(clients)])
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {"requests": len(lat), "plans_per_s": len(lat) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_batch": float(np.mean(batch))}  # fmt: skip


def inprocess(ckpt: str, planner: dict, batch: int, seconds: float, obs: list, device: str) -> dict:
    """The same requests planned by ``PlanningService.plan`` in this process, ``batch`` at a time, on one torch
    thread like a replica: what the service would do without HTTP, Serve and queueing."""
    import torch

    from serving.client import encode_obs
    from serving.schemas import PlanRequest
    from serving.service import PlanningService

    torch.set_num_threads(1)
    service = PlanningService.load(ckpt, device=device)
    requests = [PlanRequest.model_validate({"obs": encode_obs(obs[i % len(obs)]), "planner": planner, "seed": i,
                                            "goal": encode_obs(obs[(i + 1) % len(obs)])})
                for i in range(batch)]  # fmt: skip
    service.plan(requests)  # warm-up
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(lat) < 2:
        t1 = time.perf_counter()
        service.plan(requests)
        lat.append(time.perf_counter() - t1)
    ms = np.array(lat) * 1e3
    return {
        "requests": len(lat) * batch,
        "plans_per_s": len(lat) * batch / (time.perf_counter() - t0),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": batch,
    }


def start_app(ckpt: str, *, max_batch_size: int, device: str, port: int) -> tuple[str, object]:
    """The Serve app on 127.0.0.1:``port`` in a local Ray cluster -> (base URL, a function that stops it)."""
    from ray import serve

    from ray_jobs.cluster import connect
    from ray_jobs.job_config import RayConfig
    from serving.app import build_app

    connect(RayConfig())  # the embedded loopback cluster `dinowm serve` uses
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    gpus = 1 if device.startswith("cuda") else 0
    args = {
        "checkpoint": ckpt,
        "device": device,
        "max_batch_size": max_batch_size,
        "num_cpus": 1,
        "num_gpus": gpus,
    }
    serve.run(build_app(args), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}", lambda: serve.delete("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint directory (default: a tiny untrained model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--opt-steps", type=int, default=30)
    ap.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--quick", action="store_true", help="2 iterations, 2 s per measurement, 1 and 8 clients")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.opt_steps, args.clients = 2.0, 2, "1,8"
    clients = [int(c) for c in args.clients.split(",")]
    if not args.port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="dinowm-bench-serve-") as tmp:
        ckpt = args.ckpt or tiny_checkpoint(tmp)
        host = {"host": platform.node(), "device": args.device, "cpus": os.cpu_count()}
        from dinowm_core.training.checkpoint import load_config_from_checkpoint

        cfg = load_config_from_checkpoint(ckpt)
        local_obs = observations(16, cfg.img_size, cfg.env.proprio_dim)
        for name, n in [("small", n) for n in clients] + [("ref", 1)]:
            planner = {**SETTINGS[name], "opt_steps": args.opt_steps}
            row = inprocess(ckpt, planner, n, args.seconds, local_obs, args.device)
            emit(
                bench="serve", setting=name, planner=planner, clients=n, batching="in-process", **row, **host
            )
        for max_batch in (32, 1):
            url, stop = start_app(ckpt, max_batch_size=max_batch, device=args.device, port=args.port)
            try:
                with PlanningClient(url) as c:
                    c.wait_ready(120)
                    info = c.models()
                obs = observations(16, info.img_size, info.proprio_dim)
                runs = [("small", n) for n in clients] + [("ref", 1)]
                for name, n in runs:
                    planner = {**SETTINGS[name], "opt_steps": args.opt_steps}
                    row = asyncio.run(load(url, planner, n, args.seconds, 2, obs))
                    emit(bench="serve", setting=name, planner=planner, clients=n, batching=max_batch > 1,
                         max_batch_size=max_batch, **row, **host)  # fmt: skip
            finally:
                stop()
    from ray import serve

    from ray_jobs.cluster import disconnect

    serve.shutdown()  # the Serve instance and Ray cluster this process started
    disconnect()


if __name__ == "__main__":
    main()

"""Multi-node scaling: training samples/s with 1 vs 2 Ray Train workers on a two-node cluster, Ray's per-step
overhead, and a paper extrapolation of the gradient all-reduce to 8 and 64 GPUs.

Measured on this machine's two-node rehearsal cluster (``tests.ray.nodes``: a head and a worker node, both
``ray start`` on 127.0.0.1, 2 logical CPUs each). Same total torch threads (the machine's cores, 2 here) in every
run: the plain process and 1 worker use 2 threads; 2 workers use 1 thread each and ask for 1.5 CPUs each, which no
single node holds, so they land one per node (checked from the train worker actors' node ids) and DDP all-reduces
their gradients over gloo between the nodes. Per-step times are the loop's own ``time/step_s`` (forward, backward,
optimizer step, data loading), from MLflow; the first ``--skip`` steps are dropped; best and median are reported.
On a shared machine wall time measures the CPU share a run got as much as its work, so each run also records its
CPU seconds per step (rank 0's process time x the workers, every thread included): the work, whatever the load.

The extrapolation counts the parameters DDP all-reduces in the reference-default model (the predictor, decoder
and action/proprio encoders that ``build_world_model`` makes from ``conf/``; the frozen DINOv2 encoder has no
gradients): a ring all-reduce moves ``2 (n - 1) / n * params * 4`` bytes (fp32 gradients) per GPU per step.
Bandwidths are stated assumptions (``ASSUMED``), the per-GPU step time is BENCHMARKS.md's H100 figure.

    python bench/multinode.py                      # ~4 min on 2 quiet cores; writes bench/results/cpu/multinode.json
    python bench/multinode.py --steps 10 --skip 2 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.train_ray import SMALL, make_dataset  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cpu" / "multinode.json"

# Paper assumptions for the extrapolation (stated in BENCHMARKS.md). Bus bandwidth = what NCCL's ring all-reduce
# achieves per GPU, i.e. the figure that divides 2 (n - 1) / n * bytes.
ASSUMED = {
    "h100_step_s": 0.093,  # BENCHMARKS.md: reference default, batch 32 per GPU, bf16, one H100
    "nvlink_bus_GBps": 350.0,  # 8x H100 SXM, NVLink 4 (450 GB/s per direction), NCCL all-reduce bus bandwidth
    "ib_bus_GBps": 40.0,  # 8 nodes x 8 GPUs, one 400 Gb/s NDR InfiniBand NIC per GPU (50 GB/s), ~80% achieved
    "bytes_per_param": 4,  # fp32 gradients (DDP all-reduces in the parameters' dtype)
}


def trainable_params() -> dict[str, int]:
    """Parameters with gradients per part of the reference-default world model (random encoder weights: the
    counts do not depend on them)."""
    from dinowm_core import load_config
    from dinowm_core.models.build import build_world_model

    wm = build_world_model(load_config(["encoder.pretrained=false"]))
    parts = {
        name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in wm.named_children()
    }
    return {name: n for name, n in parts.items() if n}


def extrapolate(params: int) -> list[dict]:
    """All-reduce time per step and the scaling efficiency it allows (no overlap with backward: a lower bound)."""
    rows = []
    for gpus, link, bus in (
        (8, "NVLink", ASSUMED["nvlink_bus_GBps"]),
        (64, "InfiniBand", ASSUMED["ib_bus_GBps"]),
    ):
        volume = 2 * (gpus - 1) / gpus * params * ASSUMED["bytes_per_param"]
        comm_s = volume / (bus * 1e9)
        step = ASSUMED["h100_step_s"]
        rows.append({"gpus": gpus, "link": link, "bus_GBps": bus, "allreduce_MB_per_gpu": round(volume / 1e6, 1),
                     "allreduce_ms": round(comm_s * 1e3, 2), "step_ms": step * 1e3,
                     "efficiency_no_overlap": round(step / (step + comm_s), 3),
                     "samples_per_s": round(gpus * 32 / (step + comm_s))})  # fmt: skip
    return rows


@dataclass(frozen=True)
class CpuClock:
    """A metric callback (rank 0 of a Ray Train run, or the plain process): appends ``step cpu_seconds`` of its
    process (every thread: torch's, gloo's) to ``path`` at each training row. On a shared machine a step's wall
    time measures the CPU share it got; its CPU time measures the work."""

    path: str

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if "time/step_s" in metrics:
            with open(self.path, "a") as f:
                f.write(f"{step} {time.process_time()}\n")


def cpu_per_step(path: Path, skip: int) -> float:
    """Median CPU seconds between consecutive logged steps after the first ``skip``."""
    rows = [tuple(map(float, line.split())) for line in path.read_text().splitlines()]
    diffs = [b[1] - a[1] for a, b in zip(rows, rows[1:], strict=False) if a[0] >= skip]
    return statistics.median(diffs)


def summary(times: list[float], skip: int, batch: int, cpu_s: float, workers: int) -> dict:
    steady = times[skip:]
    if not steady:
        raise RuntimeError(f"only {len(times)} step times logged; raise --steps above --skip")
    best, median = min(steady), statistics.median(steady)
    cpu = cpu_s * max(workers, 1)  # rank 0's CPU time x the workers (every rank does the same work)
    return {"s_per_step": round(best, 3), "s_per_step_median": round(median, 3),
            "samples_per_s": round(batch / best, 2), "samples_per_s_median": round(batch / median, 2),
            "cpu_s_per_step": round(cpu, 3), "cpu_ms_per_sample": round(1e3 * cpu / batch, 1),
            "steps_timed": len(steady)}  # fmt: skip


def plain_step_times(overrides: list[str], run_dir: Path, clock: CpuClock) -> list[float]:
    """``fit`` in this process with identity hooks -> the logged ``time/step_s``."""
    from dinowm_core import load_config
    from dinowm_core.training.hooks import TrainHooks
    from dinowm_core.training.loop import fit

    class Timing(TrainHooks):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.times: list[float] = []

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            if "time/step_s" in metrics:
                self.times.append(metrics["time/step_s"])
                clock(metrics, step)

    hooks = Timing(device="cpu", run_dir=run_dir)
    fit(load_config(overrides), hooks)
    return hooks.times


def ray_run(
    cluster, overrides: list[str], workers: int, cpus: float, out: Path, clock: CpuClock
) -> tuple[list[float], list[str]]:
    """A Ray Train run on the cluster -> (its step times, the node ids its train workers ran on)."""
    from mlflow.tracking import MlflowClient

    from ray_jobs.job_config import load_run_config
    from ray_jobs.train import run

    before = {a["actor_id"] for a in cluster.state("actors", class_name="RayTrainWorker")}
    cfg, job = load_run_config([*overrides, f"ray.address={cluster.gcs_address}", f"ray.num_workers={workers}",
                                f"ray.cpus_per_worker={cpus:g}", f"output_dir={out}",
                                "mlflow.register_model=null"])  # fmt: skip
    outcome = run(cfg, job, metric_callbacks=[clock])
    uri = f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"
    history = MlflowClient(uri).get_metric_history(outcome.mlflow_run_id, "time/step_s")
    actors = [a for a in cluster.state("actors", class_name="RayTrainWorker") if a["actor_id"] not in before]
    return [m.value for m in sorted(history, key=lambda m: m.step)], sorted(a["node_id"] for a in actors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (training.max_steps)")
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the timing")
    ap.add_argument("--batch", type=int, default=8, help="global batch")
    ap.add_argument("--extra", nargs="*", default=["training.amp=bf16"], help="more config overrides")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from tests.ray.nodes import LocalCluster

    params = trainable_params()
    total = sum(params.values())
    cores = os.cpu_count() or 1
    result = {"machine": {"cores": cores}, "config": "small_16p", "batch": args.batch, "overrides": args.extra,
              "steps": args.steps, "skip": args.skip}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dwmn-", dir="/tmp") as tmp:
        root = Path(tmp)
        base = [*SMALL, *args.extra]
        data = make_dataset(root, base, cache=True)
        overrides = [*base, f"data.path={data}", f"training.batch_size={args.batch}", "data.feature_cache=true",
                     f"training.max_steps={args.steps}", "training.log_every_steps=1", "training.num_val_rollouts=0",
                     "training.val_max_batches=1", "training.num_reconstruct_samples=0",
                     "training.val_at_start=false", "data.num_workers=0"]  # fmt: skip
        load = os.getloadavg()[0]
        clock = CpuClock(str(root / "cpu-plain.txt"))
        times = plain_step_times(overrides, root / "plain", clock)
        plain = summary(times, args.skip, args.batch, cpu_per_step(Path(clock.path), args.skip), 1)
        result["plain"] = {"threads": cores, **plain, "load_avg_1m": round(load, 2)}
        print(json.dumps({"plain": result["plain"]}), flush=True)

        (root / "cluster").mkdir()
        cluster = LocalCluster(root / "cluster")
        os.environ.update(
            {k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        )  # this driver's
        import ray

        try:
            t0 = time.monotonic()
            cluster.start_pair(head=(cores, {"bench_head": 1}), worker=(cores, {"bench_worker": 1}))
            nodes = cluster.wait_nodes(2)
            result["cluster_start_s"] = round(time.monotonic() - t0, 1)
            roles = {
                n["node_id"]: "head" if "bench_head" in n["resources_total"] else "worker" for n in nodes
            }
            # 1 worker with every thread; 2 workers with half each, 1.5 CPUs so they cannot share a node
            for workers, cpus in ((1, cores), (2, cores / 2 + 0.5)):
                load = os.getloadavg()[0]
                clock = CpuClock(str(root / f"cpu-ray{workers}.txt"))
                times, where = ray_run(cluster, overrides, workers, cpus, root / f"ray{workers}", clock)
                row = summary(
                    times, args.skip, args.batch, cpu_per_step(Path(clock.path), args.skip), workers
                )
                row.update(threads_per_worker=max(1, int(cpus)), nodes=sorted(roles.get(n, "?") for n in where),
                           overhead_pct=round(100 * (row["s_per_step"] / plain["s_per_step"] - 1), 1),
                           overhead_pct_median=round(100 * (row["s_per_step_median"] / plain["s_per_step_median"] - 1), 1),
                           cpu_overhead_pct=round(100 * (row["cpu_s_per_step"] / plain["cpu_s_per_step"] - 1), 1),
                           load_avg_1m=round(load, 2))  # fmt: skip
                result[f"ray_{workers}_worker"] = row
                print(json.dumps({f"ray_{workers}_worker": row}), flush=True)
        finally:
            ray.shutdown()
            cluster.stop()
    one, two = result["ray_1_worker"], result["ray_2_worker"]
    result["speedup_2_vs_1"] = round(two["samples_per_s"] / one["samples_per_s"], 3)
    result["cpu_per_sample_2_vs_1"] = round(two["cpu_s_per_step"] / one["cpu_s_per_step"], 3)
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    result["extrapolation"] = {"assumed": ASSUMED, "trainable_params": params, "trainable_params_total": total,
                               "rows": extrapolate(total)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"speedup_2_vs_1": result["speedup_2_vs_1"], "extrapolation": result["extrapolation"]}))


if __name__ == "__main__":
    main()

"""Ray Train overhead: steady-state seconds per training step in a plain process vs under ``ray_jobs.train``.

Prints one JSON object per line: the plain process (``dinowm_core.training.loop.fit``), then Ray Train (V2) with
each requested number of workers on the same config, dataset and global batch. Per-step times are the loop's own
``time/step_s`` (forward, backward, optimizer step and data loading; ``training.log_every_steps=1``): from the
hooks in the plain process, from the MLflow run that Ray's rank 0 logs to. Worker start-up, the feature-cache
build and validation fall outside every step, and the first ``--skip`` steps (warm-up) are dropped.
``overhead_pct`` compares the best step under Ray with the best plain step (best-of, as the load on a shared
2-core machine only ever adds time); medians are reported too.

With N workers on this machine each worker gets ``ray.cpus_per_worker = cores / N`` torch threads and the global
batch is split N ways, so the comparison is the same work on the same cores, plus DDP's gradient all-reduce.

    python bench/train_ray.py                          # 16-patch config, batch 32, bf16, feature cache
    python bench/train_ray.py --workers 1 --steps 6 --extra training.amp=off
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SMALL = ["env=wall", "encoder.pretrained=false", "img_size=64"]  # ViT-S/14 random init, 56 px -> 16 patches


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def make_dataset(root: Path, overrides: list[str], cache: bool) -> Path:
    from dinowm_core import load_config
    from dinowm_core.data.features import encode_dataset
    from dinowm_core.data.generate import generate
    from dinowm_core.models.build import build_world_model

    cfg = load_config(overrides)
    data = root / "wall"
    generate("wall", 12, 60, data, img_size=cfg.img_size, progress=False)
    if cache:  # the workers find it in the dataset directory (same encoder fingerprint: same seeded init)
        encode_dataset(data, cfg.encoder.name, img_size=cfg.img_size, encoder=build_world_model(cfg).encoder)
    return data


def summary(times: list[float], skip: int, batch: int) -> dict:
    steady = times[skip:]
    if not steady:
        raise RuntimeError(f"only {len(times)} step times logged; raise --steps above --skip")
    best = min(steady)
    return {"s_per_step": round(best, 3), "s_per_step_median": round(statistics.median(steady), 3),
            "samples_per_s": round(batch / best, 2), "steps_timed": len(steady)}  # fmt: skip


def plain_step_times(overrides: list[str], run_dir: Path) -> list[float]:
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

    hooks = Timing(device="cpu", run_dir=run_dir)
    fit(load_config(overrides), hooks)
    return hooks.times


def ray_step_times(overrides: list[str], workers: int, out: Path) -> list[float]:
    from mlflow.tracking import MlflowClient

    from ray_jobs.job_config import load_run_config
    from ray_jobs.train import run

    cores = os.cpu_count() or 1
    cfg, job = load_run_config([*overrides, f"ray.num_workers={workers}", f"ray.cpus_per_worker={cores / workers:g}",
                                f"output_dir={out}", "mlflow.register_model=null"])  # fmt: skip
    outcome = run(cfg, job)
    uri = f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"
    history = MlflowClient(uri).get_metric_history(outcome.mlflow_run_id, "time/step_s")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workers", default="1,2", help="Ray Train worker counts to compare with the plain process"
    )
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run (training.max_steps)")
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the timing")
    ap.add_argument("--batch", type=int, default=32, help="global batch")
    ap.add_argument("--no-cache", action="store_true", help="encode every batch instead of the feature cache")
    ap.add_argument("--extra", nargs="*", default=["training.amp=bf16"], help="more config overrides")
    args = ap.parse_args()
    cache = not args.no_cache
    with tempfile.TemporaryDirectory(prefix="dwm-bench-ray-") as tmp:
        root = Path(tmp)
        base = [*SMALL, *args.extra]
        data = make_dataset(root, base, cache)
        overrides = [*base, f"data.path={data}", f"training.batch_size={args.batch}",
                     f"data.feature_cache={str(cache).lower()}", f"training.max_steps={args.steps}",
                     "training.log_every_steps=1", "training.num_val_rollouts=0", "training.val_max_batches=1",
                     "training.num_reconstruct_samples=0", "training.val_at_start=false",
                     "data.num_workers=0"]  # fmt: skip
        common = {"config": "small_16p", "batch": args.batch, "cache": cache, "overrides": args.extra}
        load = round(os.getloadavg()[0], 2)
        plain = summary(plain_step_times(overrides, root / "plain"), args.skip, args.batch)
        emit(mode="plain", workers=0, **common, **plain, load_avg_1m=[load, round(os.getloadavg()[0], 2)])
        for workers in map(int, args.workers.split(",")):
            load = round(os.getloadavg()[0], 2)
            times = ray_step_times(overrides, workers, root / f"ray{workers}")
            row = summary(times, args.skip, args.batch)
            overhead = 100 * (row["s_per_step"] / plain["s_per_step"] - 1)
            overhead_median = 100 * (row["s_per_step_median"] / plain["s_per_step_median"] - 1)
            emit(mode="ray", workers=workers, **common, **row, overhead_pct=round(overhead, 1),
                 overhead_pct_median=round(overhead_median, 1),
                 load_avg_1m=[load, round(os.getloadavg()[0], 2)])  # fmt: skip


if __name__ == "__main__":
    main()

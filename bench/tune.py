"""Sweep overhead: a 4-trial ``dinowm tune`` against the same 4 trials as sequential ``dinowm train`` commands.

Prints one JSON object per line, each a wall-clock measurement of a fresh command (its own embedded Ray
cluster, as a user runs them), on the tiny offline Wall model:

* ``train_x4``: 4 ``dinowm train`` runs in a row, one per learning rate of the grid (``--epochs`` each);
* ``tune_fifo``: ``dinowm tune`` over the same grid without early stopping (the same training work), one trial
  at a time and ``--concurrency`` at once;
* ``tune_asha``: the same sweep with ASHA (grace 1, reduction 2): the trials that cannot learn stop at the
  first rung;
* ``startup``: per-trial start-up cost, from sweeps and runs of one optimizer step
  (``training.max_steps=1``): the Tune trial's own time (trial process, Train worker group, model build) and a
  ``dinowm train`` command's wall time (process, cluster, workers, model build).

    python bench/tune.py                      # epochs 4, concurrency 2
    python bench/tune.py --epochs 2 --out bench/results/cpu/tune.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY = ["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=vqvae_small", "img_size=64",
        "num_hist=1", "data.num_workers=0", "training.batch_size=8", "training.num_val_rollouts=1",
        "training.val_max_batches=2", "training.num_reconstruct_samples=2", "training.progress_every_s=60",
        "mlflow.register_model=null"]  # fmt: skip
LRS = [3e-3, 1e-3, 1e-7, 1e-8]  # two that learn, two that cannot (ASHA's case)
ROWS: list[dict] = []


def emit(**row) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def space(root: Path, name: str, scheduler: str) -> Path:
    path = root / f"{name}.yaml"
    grid = ", ".join(f"{lr:g}" for lr in LRS)
    path.write_text(textwrap.dedent(f"""
        kind: train
        scheduler: {{name: {scheduler}, grace_period: 1, reduction_factor: 2}}
        params:
          training.predictor_lr: {{grid: [{grid}]}}
    """) if scheduler == "asha" else textwrap.dedent(f"""
        kind: train
        scheduler: {{name: fifo}}
        params:
          training.predictor_lr: {{grid: [{grid}]}}
    """))  # fmt: skip
    return path


def trial_times(sweep_dir: Path) -> list[float]:
    from ray_jobs.tune_report import read_results

    _, _, records = read_results(sweep_dir / "results.json")
    return [r.time_s for r in records if r.time_s is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the rows as a JSON list here")
    args = ap.parse_args()
    from dinowm_core.data.generate import generate

    dinowm = str(Path(sys.executable).parent / "dinowm")
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        root = Path(tmp)
        data = root / "wall"
        generate("wall", args.episodes, 50, data, img_size=64, progress=False)
        common = [*TINY, f"data.path={data}", f"training.epochs={args.epochs}", "ray.num_workers=1"]
        cpw = f"ray.cpus_per_worker={0.95 if args.concurrency > 1 else 1}"

        total = 0.0
        for i, lr in enumerate(LRS):
            total += run([dinowm, "train", *common, f"training.predictor_lr={lr:g}", f"output_dir={root / f'train{i}'}"],
                         root / f"train{i}.log")  # fmt: skip
        emit(case="train_x4", trials=len(LRS), epochs=args.epochs, wall_s=round(total, 1))

        for scheduler in ("fifo", "asha"):
            for concurrency in sorted({1, args.concurrency}):
                out = root / f"tune_{scheduler}_{concurrency}"
                wall = run([dinowm, "tune", str(space(root, scheduler, scheduler)), *common, cpw, f"output_dir={out}",
                            "--name", "s", f"--max-concurrent={concurrency}"], root / f"{out.name}.log")  # fmt: skip
                times = trial_times(out / "ray_results" / "s")
                emit(case=f"tune_{scheduler}", trials=len(LRS), epochs=args.epochs, concurrency=concurrency,
                     wall_s=round(wall, 1), trial_s=[round(t, 1) for t in times],
                     vs_train_x4=round(wall / total, 3))  # fmt: skip

        one = [*TINY, f"data.path={data}", "training.max_steps=1", "ray.num_workers=1"]
        out = root / "startup"
        wall = run([dinowm, "tune", str(space(root, "startup", "fifo")), *one, f"output_dir={out}", "--name", "s",
                    "--max-concurrent=1"], root / "startup.log")  # fmt: skip
        times = trial_times(out / "ray_results" / "s")
        cli = run([dinowm, "train", *one, f"output_dir={root / 'startup_train'}"], root / "startup_train.log")
        emit(case="startup", tune_sweep_wall_s=round(wall, 1), tune_trial_s=[round(t, 1) for t in times],
             tune_trial_mean_s=round(sum(times) / len(times), 1), train_command_s=round(cli, 1))  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(ROWS, indent=2))


if __name__ == "__main__":
    main()

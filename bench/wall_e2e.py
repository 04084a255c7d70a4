"""End-to-end quality check on Wall: generate data, train a small model, evaluate MPC-CEM vs random.

    python bench/wall_e2e.py --out /tmp/wall_e2e --episodes 1000 --max-steps 1500 --n-evals 50 --seeds 0 1 2

Prints one JSON line per policy (success rate with its 95% Wilson interval; fixed budget of 50 env steps,
goal from ``random_state``, no oracle stop). Offline: the encoder is a frozen random ``dino_tiny`` (or the
trainable ``conv``), so expect modest numbers (platform notes: ~25% for a random patch encoder + proprio
term on a similar setup).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from dinowm_core import load_config, load_world_model
from dinowm_core.data.generate import generate
from dinowm_core.evaluation.loop import evaluate
from dinowm_core.training.hooks import TrainHooks
from dinowm_core.training.loop import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/wall_e2e"))
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=50, help="trajectory length (paper: 50)")
    ap.add_argument("--max-steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--encoder", default="dino_tiny", choices=["dino_tiny", "conv"])
    ap.add_argument("--n-evals", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    data = args.out / "data"
    t0 = time.perf_counter()
    if not (data / "manifest.json").exists():
        generate("wall", args.episodes, args.steps, data, seed=0, workers=2, img_size=64, progress=False)
    t_data = time.perf_counter() - t0

    cfg = load_config([
        "env=wall", f"encoder={args.encoder}", "predictor=vit_small", "decoder=none", "training.has_decoder=false",
        "img_size=64", "frameskip=5", "num_hist=1", f"data.path={data}", "data.num_workers=0",
        "training.batch_size=64", "training.epochs=1000", f"training.max_steps={args.max_steps}",
        "training.num_val_rollouts=0", "training.val_max_batches=5", f"output_dir={args.out}",
        # platform-notes prototype planner: CEM horizon 5, 100 samples, top 10, 5 iterations; replan every 25 steps
        "planner=mpc_cem", "planner.cem.num_samples=100", "planner.cem.topk=10", "planner.cem.opt_steps=5",
        "eval.goal_source=random_state", f"eval.n_evals={args.n_evals}", f"eval.budget={args.budget}",
        f"eval.seeds={args.seeds}", "eval.n_plot_samples=2", "eval.device=cpu",
    ])  # fmt: skip
    t0 = time.perf_counter()
    run_dir = args.out / "train"
    fitted = fit(cfg, TrainHooks(device="cpu", run_dir=run_dir))
    t_train = time.perf_counter() - t0
    wm = load_world_model(fitted.checkpoint)

    for policy in ("planner", "random"):
        pcfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"policy": policy})})
        t0 = time.perf_counter()
        res = evaluate(wm, pcfg, out_dir=args.out / f"eval_{policy}")
        s = res.summary()
        print(json.dumps({
            "bench": "wall_e2e", "policy": res.protocol["policy"], "encoder": args.encoder,
            "success_rate": s["success_rate"], "success_ci95": s["success_ci95"], "n": s["n"],
            "success_any_step_rate": s["success_any_step_rate"], "mean_distance": s["mean_distance"],
            "plan_s_per_step": s.get("mean_plan_s_per_step"), "eval_s": round(time.perf_counter() - t0, 1),
            "train_steps": fitted.steps, "train_s": round(t_train, 1), "data_s": round(t_data, 1),
            "final_train_metrics": {k: v for k, v in fitted.metrics.items() if "loss" in k},
            "protocol": res.protocol["label"],
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

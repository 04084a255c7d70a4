"""`dinowm quickstart`: the whole pipeline on embedded defaults, offline, on a CPU.

1. generate a Wall dataset (parallel workers, Arrow store);
2. train a small world model with Ray Train (embedded local cluster, DDP over 2 workers), tracked in MLflow
   (local sqlite store) with a registered model version;
3. evaluate MPC-CEM planning against a random-action baseline with Ray environment actors, at a fixed
   budget of 50 env steps (no early stop from the simulator), with success-rate confidence intervals;
4. print where everything is.

The model is the offline one (``encoder=dino_tiny``: the DINOv2 architecture with frozen random weights), so
expect modest success rates: the point is the pipeline. ``--quick`` shrinks every stage (a smoke run).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# The offline quickstart model: frozen random DINOv2-architecture encoder (no download), small residual
# predictor and decoder, 64 px frames -> 16 patch tokens; Wall with the paper's history 1, frameskip 5.
MODEL = [
    "env=wall",
    "encoder=dino_tiny",
    "predictor=vit_small",
    "decoder=vqvae_small",
    "img_size=64",
    "frameskip=5",
    "num_hist=1",
]
# The planner of the platform prototype: CEM horizon 5, 100 samples, top 10, 5 iterations, replanning
# every 25 env steps; Wall goals from the env's init/goal sampler; 50 env steps per episode.
PLAN = [
    "planner=mpc_cem",
    "planner.cem.num_samples=100",
    "planner.cem.topk=10",
    "planner.cem.opt_steps=5",
    "eval.goal_source=random_state",
    "eval.budget=50",
    "eval.n_plot_samples=2",
]
SIZES = {
    # episodes, steps per episode, optimizer steps, batch, evaluation episodes
    "full": {"episodes": 600, "steps": 50, "max_steps": 1200, "batch": 32, "n_evals": 20},
    "quick": {"episodes": 24, "steps": 30, "max_steps": 6, "batch": 8, "n_evals": 4},
}


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def run(output_dir: str, overrides: list[str], *, quick: bool = False) -> dict:
    from dinowm_core.data.generate import generate
    from dinowm_core.data.store import TrajectoryStore
    from dinowm_core.training.checkpoint import load_world_model
    from ray_jobs import tracking
    from ray_jobs import train as ray_train
    from ray_jobs.evaluate import evaluate_on_ray
    from ray_jobs.job_config import load_run_config

    size = SIZES["quick" if quick else "full"]
    out = Path(output_dir).resolve()
    data = out / "data"
    t_start = time.perf_counter()
    cfg, job = load_run_config(
        [
            *MODEL,
            *PLAN,
            f"data.path={data}",
            "data.num_workers=0",
            f"output_dir={out}",
            f"training.batch_size={size['batch']}",
            "training.epochs=1000",
            f"training.max_steps={size['max_steps']}",
            "training.val_max_batches=4",
            "training.num_val_rollouts=2",
            "ray.num_workers=2",
            f"eval.n_evals={size['n_evals']}",
            "eval.seeds=[0]",
            "eval.device=cpu",
            *overrides,
        ]
    )

    _say(f"[1/3] data: {size['episodes']} random Wall episodes x {size['steps']} steps at {cfg.img_size} px")
    t0 = time.perf_counter()
    if not (data / "manifest.json").is_file():
        generate("wall", size["episodes"], size["steps"], data, seed=0, workers=2, img_size=cfg.img_size)
    store = TrajectoryStore(data)
    _say(f"      {store.num_episodes} episodes in {data} ({time.perf_counter() - t0:.1f}s)")

    _say(f"\n[2/3] training on Ray Train: {job.ray.num_workers} workers, {size['max_steps']} steps at batch "
         f"{cfg.training.batch_size}")  # fmt: skip
    t0 = time.perf_counter()
    outcome = ray_train.run(cfg, job)
    ckpt = outcome.checkpoint
    if ckpt is None:
        raise RuntimeError("training finished without a checkpoint")
    val = {k: round(v, 5) for k, v in outcome.metrics.items() if k.startswith("val/") and "loss" in k}
    _say(f"      run {outcome.run_name}: checkpoint {ckpt}, model version {outcome.model_version} "
         f"({time.perf_counter() - t0:.0f}s); {json.dumps(val)}")  # fmt: skip

    _say(f"\n[3/3] planning: MPC-CEM vs random actions, {cfg.eval.n_evals} episodes, budget {cfg.eval.budget} "
         "env steps, Ray environment actors")  # fmt: skip
    wm = load_world_model(ckpt)
    results = {}
    for policy in ("planner", "random"):
        pcfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"policy": policy})})
        t0 = time.perf_counter()
        out_dir = out / "plan" / policy
        res = evaluate_on_ray(ckpt, pcfg, wm=wm, out_dir=out_dir)
        run_id = tracking.log_evaluation(res, pcfg, job.mlflow, out_dir, ckpt)
        s = res.summary()
        lo, hi = s["success_ci95"]
        name = res.protocol["policy"]
        results[name] = s
        _say(f"      {name:<8} success {s['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}), mean final distance "
             f"{s['mean_distance']:.1f} px  [{time.perf_counter() - t0:.0f}s, MLflow run {run_id[:8]}]")  # fmt: skip

    uri = tracking.tracking_uri(job.mlflow.tracking_uri, cfg.output_dir)
    _say(f"\ndone in {time.perf_counter() - t_start:.0f}s. Outputs in {out}:")
    _say(f"  checkpoint   {ckpt}")
    _say(f"  videos       {out / 'plan' / 'planner' / 'videos'}  (real | imagined | goal)")
    _say(f"  runs         dinowm runs list -o {out}")
    _say(f"  MLflow UI    mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    return {"checkpoint": str(ckpt), "run_name": outcome.run_name, "results": results}

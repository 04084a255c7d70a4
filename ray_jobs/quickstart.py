"""`dinowm quickstart`: the whole pipeline on embedded defaults, offline, on a CPU.

1. generate a Wall dataset (parallel workers, Arrow store);
2. train a small world model with Ray Train (embedded local cluster, DDP over 2 workers), tracked in MLflow
   (local sqlite store) with a registered model version;
3. start the planning service (Ray Serve, serving/app.py) on the same cluster, bound to 127.0.0.1, and evaluate
   MPC-CEM planning with Ray environment actors that ask it for every plan over HTTP, against a random-action
   baseline (env actors too), at a fixed budget of 50 env steps (no early stop from the simulator), with
   success-rate confidence intervals; then stop the service;
4. write a report (``report.md``: learning curves, the results table, success vs env steps, episode videos).

Every finished stage leaves a record in the output dir (data: its manifest; training: ``stages/train.json``
naming the checkpoint; planning: ``stages/plan.json`` beside the results), so a second run with the same
settings reuses them and only rewrites the report; ``--fresh`` removes the stage outputs first.

The model is the offline one (``encoder=dino_tiny``: the DINOv2 architecture with frozen random weights), so
expect modest success rates: the point is the pipeline. ``--quick`` shrinks every stage (a smoke run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The offline quickstart model: frozen random DINOv2-architecture encoder (no download), a 4-block residual
# predictor and a small decoder, 64 px frames -> 16 patch tokens; Wall with the paper's history 1, frameskip 5.
# The proprio and action embeddings are repeated 16 times in each token (the reference's own knobs) so that the
# dot's state is most of each token: the random features hardly resolve a 2 px dot (docs/quickstart_results.md).
MODEL = [
    "env=wall",
    "encoder=dino_tiny",
    "predictor=vit_small",
    "predictor.depth=4",
    "predictor.mlp_dim=512",
    "decoder=vqvae_small",
    "img_size=64",
    "frameskip=5",
    "num_hist=1",
    "num_proprio_repeat=16",
    "num_action_repeat=16",
]
# How it trains: a cosine schedule from twice the reference's learning rate, the proprio channels' errors
# weighted 30x (with random features the visual channels are otherwise 90-95% of the latent loss), and the
# decoder, which never affects the predictor, on 1/8 of every fourth batch (on a CPU it is most of a step).
TRAINING = [
    "training.scheduler=cosine",
    "training.predictor_lr=1e-3",
    "training.action_encoder_lr=1e-3",
    "training.proprio_loss_weight=30",
    "training.decoder_batch_fraction=0.125",
    "training.decoder_every_steps=4",
]
# The planner: MPC-CEM with 100 samples, top 10, 5 iterations, replanning every 25 env steps; each plan ends
# with the episode's 50 env steps (horizon 10 model steps, then 5), so that the first plan can choose the door
# over the wall face nearest the goal (docs/quickstart_results.md); Wall goals from the env's init/goal sampler.
PLAN = [
    "planner=mpc_cem",
    "planner.horizon=10",
    "planner.end_at_budget=true",
    "planner.cem.num_samples=100",
    "planner.cem.topk=10",
    "planner.cem.opt_steps=5",
    "eval.goal_source=random_state",
    "eval.budget=50",
    "eval.n_plot_samples=2",
]
# The data: half the episodes hold each random action for several steps, so that the dot reaches and pushes
# against the walls (uniform random actions, the reference's kind of Wall data, barely touch them).
DATA_POLICY = "sticky_random:1+random:1"
SIZES = {
    # episodes, steps per episode, optimizer steps, batch, Ray Train workers and the CPUs (threads) of each,
    # evaluation episodes. On 2 cores one process using both trained this model at 11.5 steps/s where 2 DDP
    # workers of one thread each managed 8.2 (same decoder share); the smoke run keeps 2 to go through DDP.
    "full": {"episodes": 3600, "steps": 50, "max_steps": 8000, "batch": 32, "workers": 1, "worker_cpus": 2,
             "n_evals": 20},
    "quick": {"episodes": 24, "steps": 30, "max_steps": 6, "batch": 8, "workers": 2, "worker_cpus": 1,
              "n_evals": 4},
}  # fmt: skip
#: the file that marks a directory as a quickstart's output dir (``--fresh`` clears only such a dir)
MARK = ".dinowm-quickstart"
#: what the stages write under the output dir: all that ``--fresh`` removes
STAGE_OUTPUTS = ("data", "data.partial", "mlflow", "ray_results", "plan", "stages", "report", "report.md")
SERVE_APP = "dinowm-quickstart"
POLICIES = ("planner", "random")
#: seconds a plan request may take (client and service): one batch of 20 episodes with a large CEM (300 samples,
#: 10 iterations) takes over the client's default 30 s on a busy 2-core machine
PLAN_TIMEOUT_S = 300


def _say(msg: str = "") -> None:
    print(msg, flush=True)


# ---- the output dir and its stage records --------------------------------------------------------------------


def claim_output_dir(out: Path, *, fresh: bool) -> None:
    """Make ``out`` a quickstart dir; with ``fresh``, first remove its stage outputs (and nothing else).
    Raises ``ValueError`` for a non-empty dir that is not a quickstart's (``--fresh`` never clears those)."""
    mark = out / MARK
    if fresh and out.is_dir() and any(out.iterdir()):
        if not mark.is_file():
            raise ValueError(f"{out} is not a quickstart output dir (no {MARK}): --fresh clears only those; "
                             "choose another --output-dir")  # fmt: skip
        for name in STAGE_OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        _say(f"--fresh: removed the stage outputs in {out}")
    out.mkdir(parents=True, exist_ok=True)
    if not mark.is_file():
        mark.write_text(
            json.dumps({"created_by": "dinowm quickstart", "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        )


def read_stage(out: Path, stage: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished stage run with the same ``settings``, else None."""
    path = out / "stages" / f"{stage}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("settings") == settings else None


def write_stage(out: Path, stage: str, settings: dict[str, Any], record: dict[str, Any]) -> None:
    path = out / "stages" / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, **record}, indent=2))
    tmp.replace(path)  # a record is either whole or absent


def check_reused_data(data: Path, size: dict[str, Any]) -> None:
    """Refuse to reuse a dataset generated with other settings (e.g. by another quickstart version)."""
    manifest = json.loads((data / "manifest.json").read_text())
    gen = manifest.get("generator", {})
    have = {"episodes": manifest.get("num_episodes"), "steps": gen.get("steps"), "policy": gen.get("policy")}
    want = {"episodes": size["episodes"], "steps": size["steps"], "policy": DATA_POLICY}
    if have != want:
        raise ValueError(f"{data} holds a dataset generated with {have}, this quickstart needs {want}: "
                         "rerun with --fresh to regenerate it (and retrain)")  # fmt: skip


# ---- the planning service on this cluster --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def planning_service(ckpt: str, *, own_cluster: bool) -> Iterator[str]:
    """The planning service for ``ckpt`` on the connected Ray cluster, HTTP on 127.0.0.1 -> its base URL.
    Stopped on exit: Serve shut down on the quickstart's own cluster, only this app deleted on a joined one."""
    import httpx
    from ray import serve

    from serving.app import build_app

    port = _free_port()
    # Serve's per-request access lines would bury the progress lines; warnings and errors still show.
    quiet = {"log_level": "WARNING"}
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    # One replica with one reserved CPU (the env actors take a quarter each) and both cores' threads: the
    # machine's other work is waiting on its answers anyway. A plan takes about a second on 2 cores, so waiting
    # 50 ms for the episodes' requests to arrive (the default 10 ms split them into batches of ~2) is cheap.
    args = {"checkpoint": ckpt, "device": "cpu", "num_cpus": 1, "torch_threads": max(1, os.cpu_count() or 1),
            "max_batch_size": 32, "batch_wait_s": 0.05, "request_timeout_s": PLAN_TIMEOUT_S}  # fmt: skip
    try:
        serve.run(build_app(args), name=SERVE_APP, route_prefix="/", logging_config=quiet)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the proxy learns the route a moment after the app is up
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the planning service at {url} did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown() if own_cluster else serve.delete(SERVE_APP)


# ---- the stages ----------------------------------------------------------------------------------------------


def _train(out: Path, cfg: Any, job: Any, settings: dict[str, Any], size: dict[str, int]) -> dict[str, Any]:
    from ray_jobs import train as ray_train

    _say(f"\n[2/4] training on Ray Train: {job.ray.num_workers} workers, {size['max_steps']} steps at batch "
         f"{cfg.training.batch_size}")  # fmt: skip
    done = read_stage(out, "train", settings)
    if done and (Path(done["checkpoint"]) / "model.safetensors").is_file():
        _say(f"      reused: run {done['run_name']}, checkpoint {done['checkpoint']} (stages/train.json)")
        return done
    t0 = time.perf_counter()
    outcome = ray_train.run(cfg, job)
    if outcome.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    val = {k: round(v, 5) for k, v in outcome.metrics.items() if k.startswith("val/") and "loss" in k}
    record = {"checkpoint": str(outcome.checkpoint), "run_name": outcome.run_name, "run_dir": outcome.run_dir,
              "mlflow_run_id": outcome.mlflow_run_id, "model_version": outcome.model_version, "val": val,
              "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    write_stage(out, "train", settings, record)
    _say(f"      run {outcome.run_name}: checkpoint {outcome.checkpoint}, model version {outcome.model_version} "
         f"({record['seconds']:.0f}s); {json.dumps(val)}")  # fmt: skip
    return read_stage(out, "train", settings) or record


def _row(result: Any, seconds: float, service: dict[str, float] | None) -> dict[str, Any]:
    """The table row of one policy's evaluation."""
    s = result.summary()
    eps = result.episodes()
    calls = sum(m.plan_calls for m in eps)
    row = {
        "policy": result.protocol["policy"],
        "n": s["n"],
        "success_rate": s["success_rate"],
        "success_ci95": s["success_ci95"],
        "mean_distance": s.get("mean_distance"),
        "plan_s": sum(m.plan_seconds for m in eps) / calls if calls else None,
        "seconds": round(seconds, 1),
        "first_success_steps": [m.first_success_step for m in eps],
        "budget": result.protocol.get("budget"),
    }
    if service:
        row["requests"] = int(service["requests"])
        row["mean_batch"] = (
            service["requests"] / service["planner_calls"] if service["planner_calls"] else None
        )
    return row


def _plan(out: Path, cfg: Any, job: Any, ckpt: str, settings: dict[str, Any]) -> dict[str, Any]:
    from dinowm_core.evaluation.adapter import ModelAdapter
    from dinowm_core.training.checkpoint import load_world_model
    from ray_jobs import tracking
    from ray_jobs.cluster import connect
    from ray_jobs.evaluate import evaluate_on_ray
    from serving.env_actor import evaluate_with_env_actors

    _say(f"\n[3/4] planning: MPC-CEM through the planning service (Ray Serve on 127.0.0.1) vs random actions, "
         f"{cfg.eval.n_evals} episodes, budget {cfg.eval.budget} env steps, Ray environment actors")  # fmt: skip
    settings = {**settings, "checkpoint": ckpt}
    done = read_stage(out, "plan", settings)
    if done and all((out / "plan" / p / "results.json").is_file() for p in POLICIES):
        _say("      reused: results in plan/planner, plan/random (stages/plan.json)")
        return done
    connect(job.ray)  # the cluster training used is gone when training was reused
    own_cluster = not (job.ray.address or os.environ.get("RAY_ADDRESS"))
    wm = load_world_model(ckpt)
    adapter = ModelAdapter(wm, device="cpu")
    rows = {}
    for policy in POLICIES:
        pcfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"policy": policy})})
        out_dir = out / "plan" / policy
        t0 = time.perf_counter()
        if policy == "planner":
            with planning_service(ckpt, own_cluster=own_cluster) as url:
                _say(f"      planning service up at {url} ({time.perf_counter() - t0:.0f}s); env actors plan "
                     "through it")  # fmt: skip
                stats: dict[str, float] = {}
                res = evaluate_with_env_actors(pcfg, url, num_actors=2, imaginer=adapter, out_dir=out_dir,
                                               normalizer=adapter.normalizer, stats=stats,
                                               client_kwargs={"timeout_s": PLAN_TIMEOUT_S})  # fmt: skip
            _say("      planning service stopped")
        else:
            stats = {}
            res = evaluate_on_ray(ckpt, pcfg, wm=wm, out_dir=out_dir)
        run_id = tracking.log_evaluation(res, pcfg, job.mlflow, out_dir, ckpt)
        rows[policy] = row = _row(res, time.perf_counter() - t0, stats or None)
        lo, hi = row["success_ci95"]
        _say(f"      {row['policy']:<8} success {row['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}), mean final "
             f"distance {row['mean_distance']:.1f} px  [{row['seconds']:.0f}s, MLflow run {run_id[:8]}]")  # fmt: skip
    write_stage(out, "plan", settings, {"rows": rows})
    return {"settings": settings, "rows": rows}


def results_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The results as a Markdown table (printed as is, and in the report)."""
    lines = ["| policy | success (95% CI) | mean final distance | time per plan | requests served | mean batch |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows.values():
        lo, hi = row["success_ci95"]
        plan_s = f"{row['plan_s']:.2f} s" if row.get("plan_s") else "-"
        requests = str(row["requests"]) if row.get("requests") is not None else "-"
        batch = f"{row['mean_batch']:.1f}" if row.get("mean_batch") else "-"
        lines.append(f"| {row['policy']} | {row['success_rate']:.2f} ({lo:.2f}-{hi:.2f}) of {row['n']} | "
                     f"{row['mean_distance']:.1f} px | {plan_s} | {requests} | {batch} |")  # fmt: skip
    return lines


def run(output_dir: str, overrides: list[str], *, quick: bool = False, fresh: bool = False) -> dict:
    from dinowm_core.data.generate import generate
    from dinowm_core.data.store import TrajectoryStore
    from ray_jobs import tracking
    from ray_jobs.job_config import load_run_config
    from ray_jobs.quickstart_report import write_report

    size = SIZES["quick" if quick else "full"]
    out = Path(output_dir).resolve()
    data = out / "data"
    t_start = time.perf_counter()
    keys = [
        *MODEL,
        *TRAINING,
        *PLAN,
        f"data.path={data}",
        "data.num_workers=0",
        f"output_dir={out}",
        f"training.batch_size={size['batch']}",
        "training.epochs=1000",
        f"training.max_steps={size['max_steps']}",
        "training.val_max_batches=4",
        "training.num_val_rollouts=2",
        f"ray.num_workers={size['workers']}",
        f"ray.cpus_per_worker={size['worker_cpus']}",
        f"eval.n_evals={size['n_evals']}",
        "eval.seeds=[0]",
        "eval.device=cpu",
        *overrides,
    ]
    cfg, job = load_run_config(keys)
    claim_output_dir(out, fresh=fresh)
    # Planner and evaluation keys do not change the trained model: other planner settings reuse the training.
    planning = ("planner", "planner.", "eval.")
    train_settings = {
        "size": size,
        "overrides": [k for k in keys if not k.split("=")[0].startswith(planning)],
    }
    plan_settings = {"size": size, "overrides": keys}

    _say(f"[1/4] data: {size['episodes']} Wall episodes ({DATA_POLICY}) x {size['steps']} steps at "
         f"{cfg.img_size} px")  # fmt: skip
    t0 = time.perf_counter()
    if (data / "manifest.json").is_file():
        check_reused_data(data, size)
        _say(f"      reused: {data} (manifest.json)")
    else:
        generate("wall", size["episodes"], size["steps"], data, seed=0, workers=2, img_size=cfg.img_size,
                 policy=DATA_POLICY)  # fmt: skip
    store = TrajectoryStore(data)
    _say(f"      {store.num_episodes} episodes in {data} ({time.perf_counter() - t0:.1f}s)")

    trained = _train(out, cfg, job, train_settings, size)
    ckpt = trained["checkpoint"]
    planned = _plan(out, cfg, job, ckpt, plan_settings)

    _say("\n[4/4] report: learning curves, results, success vs env steps, episode videos")
    uri = tracking.tracking_uri(job.mlflow.tracking_uri, cfg.output_dir)
    report = write_report(out, trained=trained, rows=planned["rows"], tracking_uri=uri,
                          table=results_table(planned["rows"]))  # fmt: skip

    _say("")
    for line in results_table(planned["rows"]):
        _say(line)
    _say(f"\ndone in {time.perf_counter() - t_start:.0f}s. Outputs in {out}:")
    _say(f"  report       {report}")
    _say(f"  checkpoint   {ckpt}")
    _say(f"  videos       {out / 'plan' / 'planner' / 'videos'}  (real | imagined | goal)")
    _say(f"  runs         dinowm runs list -o {out}")
    _say(f"  MLflow UI    mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    return {
        "checkpoint": ckpt,
        "run_name": trained["run_name"],
        "results": planned["rows"],
        "report": str(report),
    }

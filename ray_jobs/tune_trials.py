"""What one trial of ``dinowm tune`` runs: a Tune function trainable per trial (Ray 2.60's Train V2 pattern).

* :func:`train_trial` builds the trial's config (the sweep's base config + the sampled values, through the same
  override function as the command line), then fits a ``TorchTrainer`` exactly as ``dinowm train`` does
  (``ray_jobs.train.build_trainer``). Its Train run reports through :class:`ValidationReports` (Tune's
  ``TuneReportCallback`` on the validation reports only), so Tune's scheduler sees the validation metric once
  per epoch and the checkpoint path beside it.
* :func:`planner_trial` evaluates a fixed checkpoint with the trial's planner settings on the sweep's episodes
  and seeds (Ray env actors, ``ray_jobs.evaluate.evaluate_on_ray``) and reports once.

Each trial records an MLflow run nested under the sweep's run (``ray_jobs.tracking.trial_tracker``). A trial
restarted by a resumed sweep continues its run, and its Train run resumes from its own last checkpoint (Train
V2 continues a run of the same name and storage). A trial the scheduler stops is ended by Tune (its process is
killed); the driver then closes its MLflow run as ``stopped_early``.

``sweep`` is the dict the driver passes to every trial (plain JSON-able values; see ``ray_jobs.tune``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from dinowm_core.config import Config
from dinowm_core.presets import apply_overrides
from ray_jobs import tracking
from ray_jobs.job_config import RayConfig
from ray_jobs.tune_space import as_override

log = logging.getLogger(__name__)


def train_run_name(sweep_name: str, trial_id: str) -> str:
    """The Train run of one trial (unique per sweep and trial: Train V2 continues a run of the same name)."""
    return f"{sweep_name}-{trial_id}"


def trial_overrides(sweep: dict[str, Any], config: dict[str, Any]) -> list[str]:
    return [as_override(key, config[key]) for key in sweep["keys"] if key in config]


class ValidationReports(TuneReportCallback):
    """Tune's report callback, on the reports that carry the sweep's metric (one per epoch, after validation).

    The training loop also reports mid-epoch checkpoints (``training.checkpoint_every_steps``) without
    validation metrics; Tune would reject a result without the metric, and the scheduler counts reports as time.
    """

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def _trial_tracker(sweep: dict[str, Any], trial_id: str, name: str, cfg: Config, params: dict[str, Any]):
    config = {**json.loads(cfg.model_dump_json()), "tune": {"trial_id": trial_id, **params}}
    tags = {"dinowm.kind": f"{sweep['kind']}_trial", "dinowm.tune.sweep": sweep["name"], "env": cfg.env.name}
    return tracking.trial_tracker(sweep["tracking_uri"], sweep["parent_run_id"], trial_id, name, config, tags)


def train_trial(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One training trial: the sampled ``config`` on top of the sweep's base config, trained on Ray Train."""
    from ray import tune

    from ray_jobs.train import build_trainer, worker_spec

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_overrides(Config.from_json(sweep["config"]), trial_overrides(sweep, config))
    r = RayConfig.model_validate_json(sweep["ray"])
    name = train_run_name(sweep["name"], trial_id)
    tracker = _trial_tracker(sweep, trial_id, name, cfg, config)
    spec = worker_spec(cfg, r, name, sweep["trials_storage"], tracker)
    trainer = build_trainer(spec, r, name=name, storage_path=sweep["trials_storage"],
                            callbacks=[ValidationReports(sweep["metric"])])  # fmt: skip
    try:
        trainer.fit()
    except Exception:
        tracking.end_trial_run(tracker.uri, tracker.run_id, "failed")
        raise
    tracking.end_trial_run(tracker.uri, tracker.run_id, "completed")


def planner_metrics(result: Any) -> dict[str, float]:
    """The numbers a planner trial reports: success with its 95% interval, distance, planner time per plan."""
    summary = result.summary()
    lo, hi = summary["success_ci95"]
    episodes = result.episodes()
    calls = sum(m.plan_calls for m in episodes)
    out = {
        "plan/success_rate": float(summary["success_rate"]),
        "plan/success_ci_low": float(lo),
        "plan/success_ci_high": float(hi),
        # Planner seconds per plan and episode (a batched call's time is shared by the episodes it planned).
        "plan/time_per_plan_s": sum(m.plan_seconds for m in episodes) / calls if calls else float("nan"),
        "plan/episodes": float(summary["n"]),
    }
    if "mean_min_distance" in summary:
        out["plan/mean_min_distance"] = float(summary["mean_min_distance"])
    if "mean_distance" in summary:
        out["plan/mean_final_distance"] = float(summary["mean_distance"])
    return out


def planner_trial(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One planner trial: evaluate the sweep's checkpoint with the sampled planner settings."""
    from ray import tune

    from dinowm_core.presets import plan_config
    from dinowm_core.training.checkpoint import load_config_from_checkpoint
    from ray_jobs.evaluate import evaluate_on_ray

    trial_id = tune.get_context().get_trial_id()
    trained = load_config_from_checkpoint(sweep["checkpoint"])
    cfg = plan_config(trained, [*sweep["plan_overrides"], *trial_overrides(sweep, config)])
    out_dir = Path(sweep["sweep_dir"]) / "trials" / trial_id
    tracker = _trial_tracker(sweep, trial_id, f"{sweep['name']}-{trial_id}", cfg, config)
    start = time.perf_counter()
    try:
        result = evaluate_on_ray(sweep["checkpoint"], cfg, planner="local", out_dir=out_dir,
                                 cpus_per_actor=sweep["cpus_per_actor"])  # fmt: skip
        metrics = {**planner_metrics(result), "time/trial_s": time.perf_counter() - start}
        logger = tracking.WorkerLogger(tracker.uri, tracker.run_id)
        logger.log_metrics(metrics, 0)
        if (out_dir / "results.json").is_file():
            logger.log_artifact(out_dir / "results.json")
    except Exception:
        tracking.end_trial_run(tracker.uri, tracker.run_id, "failed")
        raise
    tracking.end_trial_run(tracker.uri, tracker.run_id, "completed")
    tune.report(metrics)

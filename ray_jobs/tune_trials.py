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
import os
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


REPORTS = "dinowm_tune_reports.jsonl"  # every report a trial sent to Tune, in order (beside its Train run)
DONE = "dinowm_tune_done.json"  # written when the trial has finished: a restarted trial replays, never reruns


class ValidationReports(TuneReportCallback):
    """Tune's report callback, on the reports that carry the sweep's metric (one per epoch, after validation),
    each also appended to ``log_file`` so that a restarted trial can replay them (:func:`replay`).

    The training loop also reports mid-epoch checkpoints (``training.checkpoint_every_steps``) without
    validation metrics; Tune would reject a result without the metric, and the scheduler counts reports as time.
    """

    def __init__(self, metric: str, log_file: str) -> None:
        super().__init__()
        self.metric, self.log_file = metric, log_file

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics or self.metric not in metrics[0]:
            return
        row = {**metrics[0], **({"checkpoint_path": checkpoint.path} if checkpoint else {})}
        with open(self.log_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        super().after_report(run_context, metrics, checkpoint)


def replay(trial_dir: Path) -> bool:
    """Report again what a trial reported before its sweep was interrupted -> whether it had finished.

    Tune restarts every trial that its last saved experiment state shows unfinished, including one that
    finished in the seconds before the driver died. Replaying the recorded reports gives Tune (and ASHA) the
    trial's whole history; a finished trial then returns without training or evaluating again, an unfinished
    one continues where its Train run stopped.
    """
    from ray import tune

    log_file = trial_dir / REPORTS
    rows = (
        [json.loads(line) for line in log_file.read_text().splitlines() if line] if log_file.is_file() else []
    )
    for row in rows:
        tune.report(row)
    if rows:
        log.info(
            "trial %s: replayed %d report(s) from before the sweep was interrupted", trial_dir.name, len(rows)
        )
    return (trial_dir / DONE).is_file()


def _mark_done(trial_dir: Path) -> None:
    tmp = trial_dir / f".{DONE}.tmp"
    tmp.write_text(json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
    os.replace(tmp, trial_dir / DONE)


def _trial_tracker(sweep: dict[str, Any], trial_id: str, name: str, cfg: Config, params: dict[str, Any]):
    config = {**json.loads(cfg.model_dump_json()), "tune": {"trial_id": trial_id, **params}}
    tags = {"dinowm.kind": f"{sweep['kind']}_trial", "dinowm.tune.sweep": sweep["name"], "env": cfg.env.name}
    return tracking.trial_tracker(sweep["tracking_uri"], sweep["parent_run_id"], trial_id, name, config, tags)


def train_trial(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One training trial: the sampled ``config`` on top of the sweep's base config, trained on Ray Train."""
    from ray import tune

    from ray_jobs.train import build_trainer, worker_spec

    trial_id = tune.get_context().get_trial_id()
    name = train_run_name(sweep["name"], trial_id)
    trial_dir = Path(sweep["trials_storage"]) / name  # the trial's Train run directory
    if replay(trial_dir):
        return
    cfg = apply_overrides(Config.from_json(sweep["config"]), trial_overrides(sweep, config))
    r = RayConfig.model_validate_json(sweep["ray"])
    tracker = _trial_tracker(sweep, trial_id, name, cfg, config)
    spec = worker_spec(cfg, r, name, sweep["trials_storage"], tracker)
    trial_dir.mkdir(parents=True, exist_ok=True)
    reports = ValidationReports(sweep["metric"], str(trial_dir / REPORTS))
    trainer = build_trainer(spec, r, name=name, storage_path=sweep["trials_storage"], callbacks=[reports])
    # A failure leaves the run open: a trial that the scheduler stops also ends in an exception here, so the
    # driver, which knows which one it was, closes the run (ray_jobs.tune_finish.collect).
    trainer.fit()
    _mark_done(trial_dir)
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
    out_dir = Path(sweep["sweep_dir"]) / "trials" / trial_id
    if replay(out_dir):
        return
    trained = load_config_from_checkpoint(sweep["checkpoint"])
    cfg = plan_config(trained, [*sweep["plan_overrides"], *trial_overrides(sweep, config)])
    tracker = _trial_tracker(sweep, trial_id, f"{sweep['name']}-{trial_id}", cfg, config)
    start = time.perf_counter()
    result = evaluate_on_ray(sweep["checkpoint"], cfg, planner="local", out_dir=out_dir,
                             cpus_per_actor=sweep["cpus_per_actor"])  # fmt: skip
    metrics = {**planner_metrics(result), "time/trial_s": time.perf_counter() - start}
    logger = tracking.WorkerLogger(tracker.uri, tracker.run_id)
    logger.log_metrics(metrics, 0)
    if (out_dir / "results.json").is_file():
        logger.log_artifact(out_dir / "results.json")
    # Recorded before Tune hears of it: a sweep interrupted from here on replays the evaluation's result.
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORTS).write_text(json.dumps(metrics) + "\n")
    _mark_done(out_dir)
    tracking.end_trial_run(tracker.uri, tracker.run_id, "completed")
    tune.report(metrics)

"""The end of a sweep: every trial as a :class:`~ray_jobs.tune_report.TrialRecord`, its MLflow run closed, the
table, files and plots written (and logged to the sweep's run), and the best trial exported and registered.

The best trial's export is ``<sweep dir>/best``, a checkpoint directory:

* training sweeps: a copy of the best trial's checkpoint (the one its last reported metric belongs to);
* planner sweeps: a copy of the evaluated checkpoint whose config holds the best trial's planner and evaluation
  settings, marked ``presets.plan = "sweep:<sweep>/<trial>"`` so that ``dinowm plan`` keeps them (no env
  planning preset on top) and ``dinowm serve`` plans with them by default.

``best.json`` beside it names the trial, its values, the metric and the source (and, for planner sweeps, the
cheapest setting within the best's 95% interval).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_jobs import tracking
from ray_jobs.tune_report import (
    ERROR,
    STOPPED_EARLY,
    TERMINATED,
    TrialRecord,
    pick_cheapest_within_ci,
    plot_learning_curves,
    plot_metric_vs_params,
    plot_success_vs_cost,
    rank,
    results_table,
    write_results,
)
from ray_jobs.tune_space import SearchSpace, as_override

log = logging.getLogger("ray_jobs.tune")


@dataclass
class SweepOutcome:
    name: str
    sweep_dir: str
    parent_run_id: str
    records: list[TrialRecord]
    best: TrialRecord | None
    best_dir: str | None
    model_version: str | None
    table: str
    recommended: TrialRecord | None = None  # planner sweeps: the cheapest setting within the best's CI


PLANNER_COLUMNS = (
    "plan/success_ci_low",
    "plan/success_ci_high",
    "plan/time_per_plan_s",
    "plan/mean_min_distance",
)
TRAIN_COLUMNS = ("epoch", "step", "train/loss")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _history(result: Any, metric: str) -> list[tuple[float, float]]:
    frame = result.metrics_dataframe
    if frame is None or metric not in frame:
        return []
    x = "step" if "step" in frame else "training_iteration"
    rows = frame[[x, metric]].dropna()
    return [(float(a), float(b)) for a, b in rows.itertuples(index=False)]


def _trial_status(tune_status: str, run: Any) -> str:
    """The record's status from Tune's and the trial's own MLflow tag (set only by a trial that returned)."""
    if tune_status == "ERROR":
        return ERROR
    if tune_status != "TERMINATED":
        return tune_status  # RUNNING / PENDING: an interrupted sweep
    own = run.data.tags.get(tracking.TRIAL_STATUS_TAG) if run is not None else None
    return TERMINATED if own == "completed" else STOPPED_EARLY


def collect(state: dict[str, Any], grid: Any) -> list[TrialRecord]:
    """A record per trial of the finished experiment, closing the MLflow runs Tune's stops left open."""
    runs = tracking.trial_runs(state["tracking_uri"], state["parent_run_id"])
    columns = PLANNER_COLUMNS if state["kind"] == "planner" else TRAIN_COLUMNS
    records = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix(
            "trial_"
        )  # ray_jobs.tune.trial_dirname
        run = runs.get(trial_id)
        status = _trial_status("ERROR" if result.error else "TERMINATED", run)
        checkpoint = metrics.get("checkpoint_path")
        if run is not None and run.info.status == "RUNNING":
            # A trial Tune stopped never logged its checkpoint (a finished one did, at its end).
            if status == STOPPED_EARLY and checkpoint and (Path(checkpoint) / "config.json").is_file():
                tracking.log_checkpoint(state["tracking_uri"], run.info.run_id, Path(checkpoint))
            tracking.end_trial_run(state["tracking_uri"], run.info.run_id,
                                   {STOPPED_EARLY: "stopped_early", ERROR: "failed"}.get(status, "interrupted"))  # fmt: skip
        value = _number(metrics.get(state["metric"]))
        records.append(TrialRecord(
            trial_id=trial_id,
            params={k: result.config[k] for k in state["keys"] if k in (result.config or {})},
            status=status,
            metric=value if value is None or math.isfinite(value) else None,
            time_s=_number(metrics.get("time_total_s")),
            iterations=int(metrics.get("training_iteration") or 0),
            history=_history(result, state["metric"]),
            extra={k: v for k in columns if (v := _number(metrics.get(k))) is not None},
            checkpoint=checkpoint,
            mlflow_run_id=run.info.run_id if run is not None else None,
        ))  # fmt: skip
    return records


def _copy_dir(src: Path, dest: Path) -> None:
    """``dest`` becomes a copy of ``src``, replaced in one rename (a reader never sees half of it)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _export_train(best: TrialRecord, sweep_dir: Path) -> Path | None:
    if not best.checkpoint or not (Path(best.checkpoint) / "config.json").is_file():
        log.warning("the best trial %s has no checkpoint on this machine (%s): nothing exported", best.trial_id,
                    best.checkpoint)  # fmt: skip
        return None
    dest = sweep_dir / "best"
    _copy_dir(Path(best.checkpoint), dest)
    return dest


def _export_planner(state: dict[str, Any], best: TrialRecord, sweep_dir: Path) -> Path:
    from dinowm_core.presets import TUNED_PLAN_PREFIX, plan_config
    from dinowm_core.training.checkpoint import load_config_from_checkpoint

    trained = load_config_from_checkpoint(state["checkpoint"])
    tuned = plan_config(
        trained, [*state["plan_overrides"], *[as_override(k, v) for k, v in best.params.items()]]
    )
    tuned = tuned.model_copy(
        update={"presets": {**tuned.presets, "plan": f"{TUNED_PLAN_PREFIX}{state['name']}/{best.trial_id}"}}
    )
    dest = sweep_dir / "best"
    _copy_dir(Path(state["checkpoint"]), dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(planner=json.loads(tuned.planner.model_dump_json()), eval=json.loads(tuned.eval.model_dump_json()),
                  presets=tuned.presets)  # fmt: skip
    tmp = dest / ".config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, dest / "config.json")
    return dest


def _plots(state: dict[str, Any], space: SearchSpace, records: list[TrialRecord], plots: Path) -> list[Path]:
    metric = state["metric"]
    made = [plot_metric_vs_params(records, metric, plots / "metric_vs_params.png", log_keys=space.log_keys())]
    if state["kind"] == "train":
        made.append(plot_learning_curves(records, metric, plots / "learning_curves.png", x_label="step"))
    else:
        made.append(plot_success_vs_cost(records, plots / "success_vs_cost.png", metric=metric,
                                         cost_key="plan/time_per_plan_s",
                                         ci_keys=("plan/success_ci_low", "plan/success_ci_high")))  # fmt: skip
    return [p for p in made if p is not None]


def finish(state: dict[str, Any], space: SearchSpace, grid: Any, tracker: Any, job: Any) -> SweepOutcome:
    """Collect, report, export, register; close the sweep's MLflow run -> :class:`SweepOutcome`."""
    from ray_jobs.train import remove_staging
    from ray_jobs.tune_trials import train_run_name

    sweep_dir = Path(state["sweep_dir"])
    records = collect(state, grid)
    if state["kind"] == "train":
        for r in records:  # the workers of a trial Tune stopped never removed their node-local scratch
            remove_staging(train_run_name(state["name"], r.trial_id), job.ray)
    metric, mode = state["metric"], state["mode"]
    ranked = rank(records, mode)
    best = next(
        (r for r in ranked if r.metric is not None and (state["kind"] == "planner" or r.checkpoint)), None
    )
    recommended = None
    if state["kind"] == "planner":
        recommended = pick_cheapest_within_ci(records, metric=metric, ci_low_key="plan/success_ci_low",
                                              cost_key="plan/time_per_plan_s")  # fmt: skip
    columns = PLANNER_COLUMNS if state["kind"] == "planner" else TRAIN_COLUMNS
    table = results_table(records, metric, mode, columns=[c for c in columns if any(c in r.extra for r in records)],
                          best_id=best.trial_id if best else None)  # fmt: skip
    write_results(records, sweep_dir, metric, mode)
    plots = _plots(state, space, records, sweep_dir / "plots")
    best_dir = None
    if best is not None:
        best_dir = (
            _export_train(best, sweep_dir)
            if state["kind"] == "train"
            else _export_planner(state, best, sweep_dir)
        )
        info = {"trial": best.to_dict(), "metric": metric, "mode": mode, "exported": str(best_dir) if best_dir else None,
                "overrides": [as_override(k, v) for k, v in best.params.items()]}  # fmt: skip
        if recommended is not None:
            info["cheapest_within_ci"] = {"trial": recommended.to_dict(),
                                          "overrides": [as_override(k, v) for k, v in recommended.params.items()]}  # fmt: skip
        (sweep_dir / "best.json").write_text(json.dumps(info, indent=2))
    counts = {s: sum(r.status == s for r in records) for s in (TERMINATED, STOPPED_EARLY, ERROR)}
    summary = {"tune/trials": len(records), "tune/completed": counts[TERMINATED],
               "tune/stopped_early": counts[STOPPED_EARLY], "tune/failed": counts[ERROR]}  # fmt: skip
    if best is not None:
        summary[f"best/{metric}"] = best.metric
    files = [
        p
        for p in (sweep_dir / "results.json", sweep_dir / "results.csv", sweep_dir / "best.json")
        if p.is_file()
    ]
    tracking.log_sweep_results(tracker, files, plots, summary, best_dir, best.trial_id if best else None)
    version = None
    if best_dir is not None and job.mlflow.register_model:
        version = tracker.register(job.mlflow.register_model)
    tracker.end("FINISHED")
    return SweepOutcome(name=state["name"], sweep_dir=str(sweep_dir), parent_run_id=tracker.run_id, records=records,
                        best=best, best_dir=str(best_dir) if best_dir else None, model_version=version,
                        table=table, recommended=recommended)  # fmt: skip

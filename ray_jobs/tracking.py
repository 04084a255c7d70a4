"""MLflow glue (the only module that writes to MLflow): where runs are stored and what each training and
evaluation run records.

Storage: ``mlflow.tracking_uri`` (a job setting, ``ray_jobs.job_config``) if set, else ``$MLFLOW_TRACKING_URI``,
else an embedded sqlite store at ``<output_dir>/mlflow/mlflow.db`` whose experiment keeps artifacts in
``<output_dir>/mlflow/artifacts`` (an explicit location: MLflow would otherwise write ``./mlruns`` relative to
the working directory).

A training run is opened by the driver (:class:`RunTracker`: params = the flattened resolved config, tags = git
commit, env, dataset manifest hash, run name), written to by rank 0 only (:class:`WorkerLogger`: per-step and
per-epoch metrics, image grids, rollout videos, the final checkpoint directory under ``checkpoint/``) and closed
by the driver as FINISHED / FAILED / KILLED, registering a model version whose source is that checkpoint.
An evaluation is one run of its own (:func:`log_evaluation`: protocol params, aggregated metrics, results, videos;
:func:`log_memory_evaluation` for ``dinowm memory-eval``).
A sweep (``ray_jobs.tune``) is a run with a child run per trial (:func:`trial_tracker`, :func:`end_trial_run`,
:func:`log_sweep_results`).
Reading runs and checkpoints back is ``ray_jobs.runs``.

Open the UI with ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db --host 127.0.0.1``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dinowm_core.config import Config
    from dinowm_core.evaluation.report import EvalResult
    from ray_jobs.job_config import MlflowConfig

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
RUN_NAME_TAG = "dinowm.run_name"
# Sweeps (``ray_jobs.tune``): one run per sweep, one child run per trial (MLflow nests runs by this tag).
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "dinowm.tune.trial_id"
TRIAL_STATUS_TAG = "dinowm.tune.status"  # completed | stopped_early | failed | interrupted
# MLflow's limit on a param value (longer values are rejected, not truncated).
_MAX_PARAM_LEN = 6000


# ---- where runs live ----------------------------------------------------------------------------------


def tracking_uri(cfg_uri: str | None, output_dir: str | os.PathLike) -> str:
    """Config > ``$MLFLOW_TRACKING_URI`` > embedded sqlite under ``output_dir`` (absolute, so workers agree)."""
    uri = cfg_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = Path(output_dir).resolve() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def default_artifact_location(uri: str, output_dir: str | os.PathLike) -> str | None:
    """The embedded store's artifact root; a server (http://...) chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(output_dir).resolve() / "mlflow" / "artifacts").as_uri()
    return None


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


# ---- what a run records ---------------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"a": {"b": 1}} -> ("a.b", 1)``; lists and scalars are leaves."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in flatten(config)}


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest_hash(dataset: str | os.PathLike) -> str | None:
    file = Path(dataset) / "manifest.json"
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16] if file.is_file() else None


class RunTracker:
    """The driver's handle on one MLflow run: open (or reopen on resume), finish, register the model."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        self.uri = uri
        self.client = mlflow_client(uri)
        self.experiment_id = ensure_experiment(self.client, experiment, artifact_location)
        self.run_id: str | None = None
        self._reopened_from: str | None = None  # the status of a run continued by :meth:`reopen`

    def start(self, run_name: str, config: Mapping[str, Any], tags: Mapping[str, str | None]) -> str:
        from mlflow.entities import Param

        all_tags = {RUN_NAME_TAG: run_name, **{k: v for k, v in tags.items() if v is not None}}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:_MAX_PARAM_LEN]) for k, v in config_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(config, indent=2))
            self.client.log_artifact(self.run_id, str(path))
        return self.run_id

    def reopen(self, run_id: str) -> str:
        """Continue a run (``resume=``). A FINISHED run that then fails again stays FINISHED (see :meth:`end`)."""
        self._reopened_from = self.client.get_run(run_id).info.status
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        return run_id

    def end(self, status: str) -> None:
        """Close the run as ``status``; a failed or interrupted attempt to continue a FINISHED run keeps the
        record FINISHED and notes the attempt in the ``dinowm.failed_attempt`` tag instead."""
        if self.run_id is None:
            return
        if status != "FINISHED" and self._reopened_from == "FINISHED":
            self.client.set_tag(
                self.run_id, "dinowm.failed_attempt", f"{status} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
            )
            status = "FINISHED"
        self.client.set_terminated(self.run_id, status=status)

    def has_checkpoint(self) -> bool:
        return has_checkpoint(self.client, self.run_id)

    def register(self, model_name: str) -> str:
        """A model version whose source is this run's checkpoint artifact; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model_name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        run = self.client.get_run(self.run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{CHECKPOINT_ARTIFACT}"
        version = self.client.create_model_version(model_name, source, run_id=self.run_id)
        return version.version


class WorkerLogger:
    """Rank 0's writer into a run the driver opened (no global MLflow state, so restarts reuse the run)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client, self.run_id = mlflow_client(uri), run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


def open_tracker(mlflow_cfg: MlflowConfig, output_dir: str | os.PathLike) -> RunTracker:
    """A :class:`RunTracker` on the configured store and experiment (see the module docstring)."""
    uri = tracking_uri(mlflow_cfg.tracking_uri, output_dir)
    return RunTracker(uri, mlflow_cfg.experiment, default_artifact_location(uri, output_dir))


def log_evaluation(
    result: EvalResult, cfg: Config, mlflow_cfg: MlflowConfig, out_dir: str | os.PathLike, ckpt: str | None
) -> str:
    """Record an evaluation as an MLflow run in the training runs' store: the protocol as params, the aggregated
    metrics, ``results.json`` and the videos. Returns the run id."""
    tracker = open_tracker(mlflow_cfg, cfg.output_dir)
    protocol = {k: v for k, v in result.protocol.items() if not isinstance(v, dict | list)}
    tags = {
        "dinowm.kind": "evaluation",
        "env": cfg.env.name,
        "checkpoint": str(ckpt),
        "git_commit": git_commit(),
    }
    run_name = f"plan-{result.protocol['policy']}-{cfg.env.name}"
    run_id = tracker.start(
        run_name, {"eval": protocol, "seeds": cfg.eval.seeds, "checkpoint": str(ckpt)}, tags
    )
    try:
        client = tracker.client
        for key, value in result.flat_metrics("plan").items():
            client.log_metric(run_id, key, float(value))
        client.log_artifact(run_id, str(Path(out_dir) / "results.json"))
        if (Path(out_dir) / "videos").is_dir():
            client.log_artifacts(run_id, str(Path(out_dir) / "videos"), artifact_path="videos")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_id


def log_memory_evaluation(
    result: Mapping[str, Any], cfg: Config, mlflow_cfg: MlflowConfig, out_dir: str | os.PathLike, ckpt: str | None,
    plots: list[Path],
) -> str:  # fmt: skip
    """Record a memory evaluation (``dinowm memory-eval``) as an MLflow run: the grid as params, the pooled
    scores with their interval ends as metrics, ``results.json``, the plots and the GIFs. Returns the run id."""
    from dinowm_core.evaluation.memory.scores import flat_metrics

    tracker = open_tracker(mlflow_cfg, cfg.output_dir)
    tags = {"dinowm.kind": "memory_evaluation", "env": cfg.env.name, "checkpoint": str(ckpt),
            "git_commit": git_commit()}  # fmt: skip
    params = {"memory_eval": cfg.memory_eval.model_dump(), "predictor": cfg.presets.get("predictor"),
              "checkpoint": str(ckpt), "runner": result["protocol"]["runner"]}  # fmt: skip
    run_id = tracker.start(f"memory-eval-{cfg.presets.get('predictor') or 'model'}", params, tags)
    try:
        client = tracker.client
        for key, value in flat_metrics(result).items():
            client.log_metric(run_id, key, value)
        client.log_artifact(run_id, str(Path(out_dir) / "results.json"))
        for p in plots:
            client.log_artifact(run_id, str(p), artifact_path="plots")
        for sub in ("videos", "plan"):
            if (Path(out_dir) / sub).is_dir():
                client.log_artifacts(run_id, str(Path(out_dir) / sub), artifact_path=sub)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_id


def trial_tracker(
    uri: str, parent_run_id: str, trial_id: str, run_name: str, config: Mapping[str, Any],
    tags: Mapping[str, str | None],
) -> RunTracker:  # fmt: skip
    """The MLflow run of one sweep trial, a child of the sweep's run. A trial that Tune starts again (a resumed
    sweep) continues its own run rather than opening a second one."""
    client = mlflow_client(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    tracker = RunTracker(uri, client.get_experiment(experiment_id).name)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    if found:
        tracker.reopen(found[0].info.run_id)
    else:
        tracker.start(run_name, config, {PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, **tags})
    return tracker


def trial_runs(uri: str, parent_run_id: str) -> dict[str, Any]:
    """``{trial id: mlflow Run}`` of a sweep's child runs."""
    client = mlflow_client(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=10_000)  # fmt: skip
    return {run.data.tags[TRIAL_TAG]: run for run in runs if TRIAL_TAG in run.data.tags}


def end_trial_run(uri: str, run_id: str, trial_status: str) -> None:
    """Close a trial's run: ``trial_status`` (completed, stopped_early, failed, interrupted) as a tag; MLflow's
    status FINISHED for the first two (an early stop is the scheduler's normal decision), else FAILED / KILLED."""
    client = mlflow_client(uri)
    client.set_tag(run_id, TRIAL_STATUS_TAG, trial_status)
    status = {"completed": "FINISHED", "stopped_early": "FINISHED", "failed": "FAILED"}.get(
        trial_status, "KILLED"
    )
    client.set_terminated(run_id, status=status)


def log_checkpoint(uri: str, run_id: str, checkpoint: Path) -> None:
    """A checkpoint directory as the run's ``checkpoint`` artifact, unless it has one already."""
    client = mlflow_client(uri)
    if not has_checkpoint(client, run_id):
        client.log_artifacts(run_id, str(checkpoint), CHECKPOINT_ARTIFACT)


def log_sweep_results(
    tracker: RunTracker, files: list[Path], plots: list[Path], metrics: Mapping[str, float],
    best_dir: Path | None, best_trial: str | None,
) -> None:  # fmt: skip
    """What a finished sweep adds to its run: result files, plots (under ``plots/``), summary metrics, and the
    best trial's checkpoint as the run's ``checkpoint`` (what :meth:`RunTracker.register` registers)."""
    client, run_id = tracker.client, tracker.run_id
    for path in files:
        client.log_artifact(run_id, str(path))
    for path in plots:
        client.log_artifact(run_id, str(path), "plots")
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    if best_dir is not None:
        client.log_artifacts(run_id, str(best_dir), CHECKPOINT_ARTIFACT)
    if best_trial is not None:
        client.set_tag(run_id, "dinowm.tune.best_trial", best_trial)


def has_checkpoint(client: Any, run_id: str, path: str = CHECKPOINT_ARTIFACT) -> bool:
    """Whether the run logged a checkpoint directory (one artifact listing; local on the embedded store)."""
    return f"{path}/config.json" in {f.path for f in client.list_artifacts(run_id, path)}

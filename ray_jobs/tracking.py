"""MLflow glue (the only module that writes to MLflow): where runs are stored, what each training and
evaluation run records, and model resolution.

Storage: ``mlflow.tracking_uri`` (a job setting, ``ray_jobs.job_config``) if set, else ``$MLFLOW_TRACKING_URI``,
else an embedded sqlite store at ``<output_dir>/mlflow/mlflow.db`` whose experiment keeps artifacts in
``<output_dir>/mlflow/artifacts`` (an explicit location: MLflow would otherwise write ``./mlruns`` relative to
the working directory).

A training run is opened by the driver (:class:`RunTracker`: params = the flattened resolved config, tags = git
commit, env, dataset manifest hash, run name), written to by rank 0 only (:class:`WorkerLogger`: per-step and
per-epoch metrics, image grids, rollout videos, the final checkpoint directory under ``checkpoint/``) and closed
by the driver as FINISHED / FAILED / KILLED, registering a model version whose source is that checkpoint.
An evaluation is one run of its own (:func:`log_evaluation`: protocol params, aggregated metrics, results, videos).
:func:`local_checkpoint` turns a directory, ``runs:/id/checkpoint``, ``runs:/id``, ``models:/name/version``,
``models:/name@alias``, ``name`` (latest version) or a run name into a local directory that
``dinowm_core.load_world_model`` reads; downloads go to a reusable cache (``<output_dir>/models``), never
the system temp directory.

Open the UI with ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db --host 127.0.0.1``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
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
# MLflow's limit on a param value (longer values are rejected, not truncated).
_MAX_PARAM_LEN = 6000
_KEY_METRICS = ("epoch", "step", "train/loss", "val/loss")


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


def _client(uri: str):
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
        self.client = _client(uri)
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
        self.client, self.run_id = _client(uri), run_id

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


# ---- reading runs and models back -------------------------------------------------------------------------


def _run_by_name_or_id(client: Any, experiment: str | None, name_or_id: str) -> Any | None:
    """The newest run tagged with this run name in ``experiment``, else the run with this id, else None."""
    if experiment is not None and (exp := client.get_experiment_by_name(experiment)) is not None:
        found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name_or_id}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])  # fmt: skip
        if found:
            return found[0]
    try:
        return client.get_run(name_or_id)
    except Exception:  # MLflow raises its own exception types for unknown ids
        return None


def _model_version(client: Any, ref: str) -> Any | None:
    """``models:/name/3``, ``models:/name@alias``, ``models:/name/latest``, ``name``, ``name/3``, ``name@alias``
    -> the model version, or None when the registry has no such model, version or alias."""
    from mlflow.exceptions import MlflowException

    name = ref.removeprefix("models:/")
    try:
        if "@" in name:
            name, alias = name.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = name.partition("/")
        if version and version != "latest":
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:  # unknown model / version / alias, or a name the registry rejects
        return None
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _run_checkpoint(client: Any, run: Any, path: str = CHECKPOINT_ARTIFACT) -> tuple[str, str, Any]:
    name = run.data.tags.get(RUN_NAME_TAG) or run.info.run_name
    if not has_checkpoint(client, run.info.run_id, path):
        raise LookupError(f"run {name!r} ({run.info.run_id}, {run.info.status}) has no checkpoint: "
                          f"no {path}/config.json among its artifacts")  # fmt: skip
    key = f"run-{run.info.run_id}" + ("" if path == CHECKPOINT_ARTIFACT else "-" + path.replace("/", "_"))
    return f"runs:/{run.info.run_id}/{path}", key, run


def checkpoint_source(client: Any, ref: str, experiment: str | None = None) -> tuple[str, str, Any]:
    """An MLflow reference to a checkpoint -> (artifact URI, cache key, the run that logged it or None).

    ``runs:/ID/checkpoint`` (any artifact path), ``runs:/ID`` (its checkpoint), ``models:/NAME/VERSION``,
    ``models:/NAME@ALIAS``, ``models:/NAME`` (latest version), or a bare registered model name (``NAME``,
    ``NAME/3``, ``NAME@ALIAS``), run name (newest of that name in ``experiment``) or run id.
    Raises ``LookupError`` naming what was looked for."""
    if ref.startswith("runs:/"):
        run_id, _, path = ref.removeprefix("runs:/").strip("/").partition("/")
        run = _run_by_name_or_id(client, None, run_id) if run_id else None
        if run is None:
            raise LookupError(f"{ref}: no run with id {run_id!r}")
        return _run_checkpoint(client, run, path.strip("/") or CHECKPOINT_ARTIFACT)
    if ref.startswith("models:/") or "@" in ref or "/" in ref:
        mv = _model_version(client, ref)
        if mv is None:
            raise LookupError(f"{ref!r} is no checkpoint directory or registered model version")
    else:
        mv = _model_version(client, ref)
        if mv is None:
            run = _run_by_name_or_id(client, experiment, ref)
            if run is None:
                where = f"run in experiment {experiment!r}" if experiment else "run"
                raise LookupError(f"{ref!r} is no checkpoint directory, registered model or {where}")
            return _run_checkpoint(client, run)
    run = _run_by_name_or_id(client, None, mv.run_id) if mv.run_id else None
    return mv.source, f"{mv.name}-{mv.version}", run


def local_checkpoint(
    ref: str | os.PathLike, uri: str, *, cache_dir: str | os.PathLike, experiment: str | None = None
) -> Path:
    """A local checkpoint directory for ``ref``: an existing directory as it is, else an MLflow reference
    (see :func:`checkpoint_source`) downloaded once into ``cache_dir/<run-ID | NAME-VERSION>`` and reused
    while the run that logged it has not changed since (a resumed run logs a new checkpoint at the same path).

    Raises ``FileNotFoundError`` for a missing path that cannot be an MLflow reference either (``./x``, ``/x``)
    and ``LookupError`` when MLflow has nothing by that name, or it is not a dinowm checkpoint."""
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if not text.startswith(("runs:/", "models:/")):
        if text.startswith(("/", ".", "~")):
            raise FileNotFoundError(f"checkpoint directory {text} does not exist")
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        if db is not None and not Path(db).is_file():  # nothing recorded yet: do not create the store
            raise FileNotFoundError(
                f"{text!r} is no checkpoint directory, and there is no MLflow store at {db}"
            )
    from mlflow.artifacts import download_artifacts

    source, key, run = checkpoint_source(_client(uri), text, experiment)
    dst = Path(cache_dir) / key
    stamp = {"source": source, "run_end_time": run.info.end_time if run is not None else None}
    stamp_file = dst / ".dinowm-source.json"
    if (
        (dst / "config.json").is_file()
        and stamp_file.is_file()
        and json.loads(stamp_file.read_text()) == stamp
    ):
        log.info("%s: using the copy in %s", text, dst)
        return dst
    partial = Path(cache_dir) / f".{key}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        local = Path(download_artifacts(artifact_uri=source, dst_path=str(partial), tracking_uri=uri))
        if not (local / "config.json").is_file():
            raise LookupError(f"{text}: {source} is not a dinowm checkpoint (no config.json)")
        (local / stamp_file.name).write_text(json.dumps(stamp))
        shutil.rmtree(dst, ignore_errors=True)  # an older or incomplete copy
        local.rename(dst)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("%s: downloaded to %s", text, dst)
    return dst


def has_checkpoint(client: Any, run_id: str, path: str = CHECKPOINT_ARTIFACT) -> bool:
    """Whether the run logged a checkpoint directory (one artifact listing; local on the embedded store)."""
    return f"{path}/config.json" in {f.path for f in client.list_artifacts(run_id, path)}


def _summary(run: Any, client: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    has_ckpt = data.tags.get("dinowm.kind") != "evaluation" and has_checkpoint(client, info.run_id)
    return {
        "name": data.tags.get(RUN_NAME_TAG) or info.run_name,
        "run_id": info.run_id,
        "status": info.status,
        "start": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.start_time / 1000)),
        "metrics": {k: data.metrics[k] for k in _KEY_METRICS if k in data.metrics},
        "checkpoint": f"runs:/{info.run_id}/{CHECKPOINT_ARTIFACT}" if has_ckpt else None,
    }


def list_runs(uri: str, experiment: str, max_results: int = 20) -> list[dict[str, Any]]:
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id], max_results=max_results, order_by=["attributes.start_time DESC"]
    )
    return [_summary(r, client) for r in runs]


def find_run(uri: str, experiment: str, name_or_id: str) -> Any:
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment {experiment!r} in {uri}")
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name_or_id}'")
    if found:
        return found[0]
    try:
        return client.get_run(name_or_id)
    except Exception:  # MLflow raises its own exception types for unknown ids
        raise LookupError(f"no run named {name_or_id!r} in experiment {experiment!r}") from None


def show_run(uri: str, experiment: str, name_or_id: str) -> dict[str, Any]:
    run = find_run(uri, experiment, name_or_id)
    client = _client(uri)
    out = _summary(run, client)
    out["metrics"] = dict(sorted(run.data.metrics.items()))
    out["tags"] = {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith("mlflow.")}
    out["artifacts"] = [f.path for f in client.list_artifacts(run.info.run_id)]
    out["params"] = len(run.data.params)
    return out

"""Reading MLflow back: runs (``dinowm runs list / show``) and checkpoints by reference.

:func:`local_checkpoint` turns a directory, ``runs:/id/checkpoint``, ``runs:/id``, ``models:/name/version``,
``models:/name@alias``, ``name`` (latest version) or a run name into a local directory that
``dinowm_core.load_world_model`` reads; downloads go to a reusable cache (``<output_dir>/models``), never the
system temp directory. Writing runs is ``ray_jobs.tracking``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ray_jobs.tracking import CHECKPOINT_ARTIFACT, RUN_NAME_TAG, has_checkpoint, mlflow_client

log = logging.getLogger(__name__)

_KEY_METRICS = ("epoch", "step", "train/loss", "val/loss")  # the columns of `dinowm runs list`


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


def is_reference(ref: str) -> bool:
    """An MLflow run or model URI (``runs:/...``, ``models:/...``) rather than a path or a name."""
    return ref.startswith(("runs:/", "models:/"))


def checkpoint_for(ref: str, overrides: list[str], mlflow_cfg: Any) -> Path:
    """A command's checkpoint argument -> a local directory: a path, or an MLflow run / model reference
    (:func:`local_checkpoint`) looked up in the store of ``output_dir`` (an override among the command's
    model ``overrides``, else the default) and downloaded once into ``<output_dir>/models``."""
    from dinowm_core.config import Config
    from dinowm_core.presets import split_overrides
    from ray_jobs.tracking import tracking_uri

    output_dir = dict(split_overrides(overrides)).get("output_dir", Config.model_fields["output_dir"].default)
    uri = tracking_uri(mlflow_cfg.tracking_uri, output_dir)
    return local_checkpoint(ref, uri, cache_dir=Path(output_dir) / "models", experiment=mlflow_cfg.experiment)


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

    source, key, run = checkpoint_source(mlflow_client(uri), text, experiment)
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
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id], max_results=max_results, order_by=["attributes.start_time DESC"]
    )
    return [_summary(r, client) for r in runs]


def find_run(uri: str, experiment: str, name_or_id: str) -> Any:
    client = mlflow_client(uri)
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
    client = mlflow_client(uri)
    out = _summary(run, client)
    out["metrics"] = dict(sorted(run.data.metrics.items()))
    out["tags"] = {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith("mlflow.")}
    out["artifacts"] = [f.path for f in client.list_artifacts(run.info.run_id)]
    out["params"] = len(run.data.params)
    return out

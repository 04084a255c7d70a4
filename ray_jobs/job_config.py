"""Where a job runs and where it is recorded: the Ray and MLflow settings of ``dinowm train`` / ``plan --ray``.

They describe the cluster, not the model, so they are not part of :class:`dinowm_core.config.Config`: a
checkpoint's ``config.json`` never holds them, while the MLflow run of a training records them as params
(``ray.num_workers``, ...). Defaults live in ``conf/job.yaml``; a command line mixes both kinds of keys::

    dinowm train env=wall data.path=data/wall ray.num_workers=2 mlflow.experiment=wall

:func:`load_run_config` splits such a line (:func:`split_job_overrides`: ``ray.*`` and ``mlflow.*`` are job
keys) and validates both halves before anything starts; an unknown key fails with a message naming it.
"""

from __future__ import annotations

import os

from pydantic import Field

from dinowm_core.config import Config, ConfigModel
from dinowm_core.presets import conf_dir, load_config, read_yaml, set_dotted, split_overrides

JOB_SECTIONS = ("ray", "mlflow")


class RayConfig(ConfigModel):
    address: str | None = Field(None, description="None = $RAY_ADDRESS, else an embedded local cluster")
    num_workers: int = Field(
        1, ge=0, description="Ray Train workers (0 = the train function in the driver's process)"
    )
    use_gpu: bool = Field(False, description="give each worker a GPU (ray.gpus_per_worker of one)")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs reserved per worker (a fraction shares a core)"
    )
    gpus_per_worker: float = Field(
        1.0,
        gt=0,
        le=1,
        description="with use_gpu; a fraction shares a GPU (e.g. sweep trials: 0.5 = two per GPU)",
    )
    storage_path: str | None = Field(None, description="None = <output_dir>/ray_results")
    max_failures: int = Field(
        0, ge=-1, description="worker-group restarts from the last checkpoint (-1 = unlimited)"
    )
    num_to_keep: int = Field(2, gt=0, description="checkpoints kept per run")


class MlflowConfig(ConfigModel):
    tracking_uri: str | None = Field(None, description="None = $MLFLOW_TRACKING_URI or a local sqlite store")
    experiment: str = Field("dinowm", description="the MLflow experiment runs are recorded in")
    register_model: str | None = Field("dinowm-world-model", description="registered model name; None = skip")


class JobConfig(ConfigModel):
    """The job settings of one command: ``conf/job.yaml`` + the ``ray.*`` / ``mlflow.*`` overrides."""

    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


def split_job_overrides(overrides: list[str] | None) -> tuple[list[str], list[str]]:
    """A command line's overrides -> (model config overrides, job overrides: ``ray.*`` and ``mlflow.*``).

    Order is kept within each half. Anything that is not a job key (including malformed items) goes to the
    model side, whose parser reports it.
    """
    core, job = [], []
    for item in overrides or []:
        key, sep, _ = item.partition("=")
        is_job = sep and key.strip().split(".")[0] in JOB_SECTIONS
        (job if is_job else core).append(item)
    return core, job


def load_job_config(overrides: list[str] | None = None, *, base: JobConfig | None = None) -> JobConfig:
    """``base`` (default: ``conf/job.yaml``, if present) + ``ray.*`` / ``mlflow.*`` overrides, validated."""
    if base is not None:
        tree = base.model_dump()
    else:
        path = conf_dir() / "job.yaml"
        tree = read_yaml(path) if path.is_file() else {}
    for key, value in split_overrides(overrides):
        set_dotted(tree, key, value)
    return JobConfig.from_dict(tree)


def load_run_config(overrides: list[str] | None = None) -> tuple[Config, JobConfig]:
    """Both configs of a command line, paths made absolute (:func:`resolve_paths`); raises
    :class:`~dinowm_core.config.ConfigError` naming a bad key."""
    core, job = split_job_overrides(overrides)
    return resolve_paths(load_config(core), load_job_config(job))


def _absolute(path: str | None) -> str | None:
    """A local path as the user's shell means it (``~`` expanded, relative to the current directory); URIs
    (``s3://``, ``http://``) unchanged."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _absolute_uri(uri: str | None) -> str | None:
    # sqlite:///rel/mlflow.db is relative to the process's directory; sqlite:////abs/mlflow.db is absolute.
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + _absolute(uri.removeprefix("sqlite:///"))
    return uri


def resolve_paths(cfg: Config, job: JobConfig) -> tuple[Config, JobConfig]:
    """Every path a user types, made absolute against the current directory.

    Ray workers run in directories of their own (on another machine, on a real cluster), so a relative
    ``data.path=data/wall`` would name nothing there. Paths: ``data.path``, ``output_dir``, ``encoder.weights``,
    ``eval.goal_file``, ``ray.storage_path`` and a relative sqlite ``mlflow.tracking_uri``.
    """
    cfg = cfg.model_copy(
        update={
            "output_dir": _absolute(cfg.output_dir),
            "data": cfg.data.model_copy(update={"path": _absolute(cfg.data.path)}),
            "encoder": cfg.encoder.model_copy(update={"weights": _absolute(cfg.encoder.weights)}),
            "eval": cfg.eval.model_copy(update={"goal_file": _absolute(cfg.eval.goal_file)}),
        }
    )
    job = job.model_copy(
        update={
            "ray": job.ray.model_copy(update={"storage_path": _absolute(job.ray.storage_path)}),
            "mlflow": job.mlflow.model_copy(update={"tracking_uri": _absolute_uri(job.mlflow.tracking_uri)}),
        }
    )
    return cfg, job

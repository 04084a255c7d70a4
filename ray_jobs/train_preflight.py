"""Driver-side checks and run planning for ``ray_jobs.train``: everything decided before any worker starts.

Each problem is a :class:`PreflightError` (the CLI prints it and exits with status 2): no dataset, a dataset
that does not fit the config (``check_compatible``), a batch that does not split over the workers, too few GPUs,
a run name that is taken, or a ``resume=`` target that does not exist.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinowm_core.config import Config
from dinowm_core.data.store import DatasetError, read_manifest
from dinowm_core.data.windows import check_compatible
from ray_jobs.job_config import RayConfig

RUN_INFO = "dinowm_run.json"  # next to Ray's run state: which MLflow run a Train run writes to


class PreflightError(ValueError):
    """A problem found in the driver before any worker starts."""


def preflight(cfg: Config, r: RayConfig) -> dict[str, Any]:
    """Check the dataset (env, dims, image size: ``check_compatible``) and the topology; returns the manifest."""
    t = cfg.training
    if not cfg.data.path:
        raise PreflightError("data.path is not set (pass data.path=<dataset dir>)")
    if not Path(cfg.data.path).is_dir():
        raise PreflightError(f"data.path: dataset directory {cfg.data.path} does not exist")
    try:
        manifest = read_manifest(cfg.data.path)
        check_compatible(manifest, cfg, cfg.data.path)
    except DatasetError as e:
        raise PreflightError(str(e)) from None
    workers = max(r.num_workers, 1)
    if t.batch_size % workers:
        raise PreflightError(
            f"training.batch_size={t.batch_size} is not divisible by ray.num_workers={r.num_workers}"
        )
    if (t.batch_size // workers) % t.grad_accum:
        raise PreflightError(
            f"per-worker batch {t.batch_size // workers} is not divisible by training.grad_accum={t.grad_accum}"
        )
    return manifest


def check_gpus(r: RayConfig) -> None:
    """With ``ray.use_gpu``, the connected cluster must have a GPU per worker."""
    import ray

    if r.use_gpu:
        have = ray.cluster_resources().get("GPU", 0)
        if have < max(r.num_workers, 1):
            raise PreflightError(
                f"ray.use_gpu=true needs {max(r.num_workers, 1)} GPUs; the cluster has {have:g}"
            )


# ---- run naming and resume ----------------------------------------------------------------------------------


def new_run_name(cfg: Config) -> str:
    return f"{cfg.env.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def storage_root(cfg: Config, r: RayConfig) -> str:
    path = r.storage_path or str(Path(cfg.output_dir) / "ray_results")
    return path if "://" in path else str(Path(path).resolve())


@dataclass(frozen=True)
class RunPlan:
    """What to run: the Train run name and storage, and where (if anywhere) it starts from."""

    name: str
    storage_path: str
    resume_checkpoint: str | None = None  # a checkpoint directory to start a *new* run from
    continues: bool = False  # the name is an existing Train run (Ray restores its latest checkpoint)


def plan_run(cfg: Config, r: RayConfig, resume: str | None = None, run_name: str | None = None) -> RunPlan:
    """Resolve ``resume=`` (checkpoint dir, run dir or run name) and ``run_name=``; never reuse a name silently."""
    storage = storage_root(cfg, r)
    local = "://" not in storage
    if resume:
        path = Path(resume)
        if (path / "config.json").is_file():
            return RunPlan(run_name or new_run_name(cfg), storage, resume_checkpoint=str(path.resolve()))
        if path.is_dir() and (path / RUN_INFO).is_file():
            return RunPlan(path.name, str(path.resolve().parent), continues=True)
        if local and not (Path(storage) / resume / RUN_INFO).is_file():
            raise PreflightError(
                f"resume={resume}: not a checkpoint directory, run directory or run in {storage}"
            )
        return RunPlan(resume, storage, continues=True)
    name = run_name or new_run_name(cfg)
    if local and (Path(storage) / name).exists():
        raise PreflightError(f"run {name!r} already exists in {storage}; pass resume={name} to continue it")
    return RunPlan(name, storage)

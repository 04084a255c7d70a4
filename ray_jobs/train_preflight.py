"""Driver-side checks and run planning for ``ray_jobs.train``: everything decided before any worker starts.

Each problem is a :class:`PreflightError` (the CLI prints it and exits with status 2) found in seconds, before a
cluster starts or an MLflow run is opened:

* the dataset: its directory, manifest, env and image size (``check_compatible``), at least one training window,
  and its files (sizes always, checksums for datasets small enough to hash quickly);
* the encoder's pretrained weights can be found (without reading them);
* the topology: a batch that splits over the workers, too few GPUs (checked once connected);
* the run: a name that is taken, a ``resume=`` target that does not exist, or one whose model differs from the
  config's (it would fail in every worker with a state-dict size mismatch).

:func:`resume_config` builds the config of ``dinowm train resume=<run>`` from the run itself, so the run name alone
continues it; overrides that would change the model are refused.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinowm_core.config import Config, ConfigError, model_differences
from dinowm_core.data.integrity import check_files
from dinowm_core.data.store import DatasetError, read_manifest
from dinowm_core.data.windows import check_compatible
from ray_jobs.job_config import JobConfig, RayConfig, load_job_config, split_job_overrides

RUN_INFO = "dinowm_run.json"  # next to Ray's run state: the run's MLflow run, config and job settings


class PreflightError(ValueError):
    """A problem found in the driver before any worker starts."""


def joins_cluster(r: RayConfig) -> bool:
    """Whether the job runs on an existing cluster (whose nodes may not see this machine's files)."""
    return bool(r.address or os.environ.get("RAY_ADDRESS"))


def _shared_storage_hint(r: RayConfig) -> str:
    return " (on a Ray cluster, paths must be on storage every node can read)" if joins_cluster(r) else ""


def preflight(cfg: Config, r: RayConfig) -> dict[str, Any]:
    """Check the dataset, the encoder weights and the topology; returns the manifest."""
    t = cfg.training
    if not cfg.data.path:
        raise PreflightError("data.path is not set (pass data.path=<dataset dir>)")
    if not Path(cfg.data.path).is_dir():
        raise PreflightError(
            f"data.path: dataset directory {cfg.data.path} does not exist{_shared_storage_hint(r)}"
        )
    try:
        manifest = read_manifest(cfg.data.path)
        check_compatible(manifest, cfg, cfg.data.path)
    except DatasetError as e:
        raise PreflightError(str(e)) from None
    _check_files(cfg.data.path, manifest)
    _check_weights(cfg)
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


def _check_files(path: str, manifest: dict[str, Any]) -> None:
    problems = check_files(path, manifest)  # sizes always; checksums of datasets up to 1 GiB (seconds)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PreflightError(f"{problems[0]}{more}")


def _check_weights(cfg: Config) -> None:
    from dinowm_core.models.build import encoder_weights_source

    try:
        encoder_weights_source(cfg)
    except FileNotFoundError as e:
        raise PreflightError(str(e)) from None


def check_gpus(r: RayConfig) -> None:
    """With ``ray.use_gpu``, the connected cluster must have ``gpus_per_worker`` GPU for every worker."""
    import ray

    if r.use_gpu:
        have = ray.cluster_resources().get("GPU", 0)
        need = max(r.num_workers, 1) * r.gpus_per_worker
        if have + 1e-9 < need:
            raise PreflightError(
                f"ray.use_gpu=true needs {need:g} GPUs ({max(r.num_workers, 1)} worker(s) x "
                f"ray.gpus_per_worker={r.gpus_per_worker:g}); the cluster has {have:g}"
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

    @property
    def run_dir(self) -> str:
        return f"{self.storage_path}/{self.name}"


def _locate(resume: str, storage: str) -> tuple[str, Path | None]:
    """``resume=`` -> ("checkpoint", dir) | ("run", run dir) | ("remote", None); PreflightError if nothing matches."""
    path = Path(resume).expanduser()
    if (path / "config.json").is_file():
        return "checkpoint", path.resolve()
    if path.is_dir() and (path / RUN_INFO).is_file():
        return "run", path.resolve()
    if "://" in storage:
        return "remote", None
    if (Path(storage) / resume / RUN_INFO).is_file():
        return "run", Path(storage) / resume
    raise PreflightError(
        f"resume={resume}: not a checkpoint directory, run directory or run in {storage} (pass the run's "
        "directory, or the output_dir= / ray.storage_path= it was trained with)"
    )


def _latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p.parent for p in run_dir.glob("checkpoint_*/config.json"))
    return found[-1] if found else None


def run_config(run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The model config and job settings (a dict, maybe empty) a Train run was started with.

    Read from the run's :data:`RUN_INFO`; runs recorded before it held the config fall back to their latest
    checkpoint's ``config.json`` (and no job settings).
    """
    from dinowm_core.training.checkpoint import CheckpointError, load_config_from_checkpoint

    info_file = run_dir / RUN_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if "config" in info:
        try:
            return Config.from_json(info["config"]), info.get("job", {})
        except ConfigError as e:
            raise PreflightError(f"{info_file}: the run's config no longer loads ({e})") from None
    ckpt = _latest_checkpoint(run_dir)
    if ckpt is None:
        raise PreflightError(f"{run_dir}: the run recorded no config and has no checkpoint to continue from")
    try:
        return load_config_from_checkpoint(ckpt), {}
    except CheckpointError as e:
        raise PreflightError(str(e)) from None


def _source_config(kind: str, where: Path | None) -> tuple[Config | None, dict[str, Any]]:
    from dinowm_core.training.checkpoint import CheckpointError, load_config_from_checkpoint

    if kind == "run":
        return run_config(where)
    if kind == "checkpoint":
        try:
            return load_config_from_checkpoint(where), {}
        except CheckpointError as e:
            raise PreflightError(str(e)) from None
    return None, {}


def check_same_model(resume: str, source: Config, cfg: Config) -> None:
    """A run continues only with the model it was trained with: otherwise every worker fails loading weights."""
    diff = model_differences(source, cfg)
    if diff:
        keys = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise PreflightError(
            f"resume={resume}: the config changes the model ({keys}{more}); a run continues with the model it "
            f"was trained with. Drop those overrides, or start a new run without resume="
        )


def plan_run(cfg: Config, r: RayConfig, resume: str | None = None, run_name: str | None = None) -> RunPlan:
    """Resolve ``resume=`` (checkpoint dir, run dir or run name) and ``run_name=``; never reuse a name silently."""
    storage = storage_root(cfg, r)
    local = "://" not in storage
    if resume:
        kind, where = _locate(resume, storage)
        source, _ = _source_config(kind, where)
        if source is not None:
            check_same_model(resume, source, cfg)
        if kind == "checkpoint":
            return RunPlan(run_name or new_run_name(cfg), storage, resume_checkpoint=str(where))
        if kind == "run":
            return RunPlan(where.name, str(where.parent.resolve()), continues=True)
        return RunPlan(resume, storage, continues=True)
    name = run_name or new_run_name(cfg)
    if local and (Path(storage) / name).exists():
        raise PreflightError(f"run {name!r} already exists in {storage}; pass resume={name} to continue it")
    return RunPlan(name, storage)


def resume_config(resume: str, overrides: list[str]) -> tuple[Config, JobConfig]:
    """The config of ``dinowm train resume=<run or checkpoint> [overrides]``: the run's (or checkpoint's) own
    config and job settings, then the overrides. Overrides that change the model raise :class:`PreflightError`
    (:func:`check_same_model`); the rest (``training.max_steps``, ``data.path``, ``ray.*``, ...) apply.
    """
    from dinowm_core.presets import apply_overrides, split_overrides
    from ray_jobs.job_config import resolve_paths

    core, job_overrides = split_job_overrides(overrides)
    output_dir = dict(split_overrides(core)).get("output_dir") or Config.model_fields["output_dir"].default
    storage = dict(split_overrides(job_overrides)).get("ray.storage_path") or str(
        Path(output_dir) / "ray_results"
    )
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    kind, where = _locate(resume, storage)
    source, job_tree = _source_config(kind, where)
    if source is None:
        raise PreflightError(
            f"resume={resume}: the run is in remote storage {storage}; pass the run's config overrides too"
        )
    base_job = JobConfig.from_dict(job_tree) if job_tree else load_job_config([])
    job = load_job_config(job_overrides, base=base_job)
    cfg = apply_overrides(source, core)
    check_same_model(resume, source, cfg)
    return resolve_paths(cfg, job)

"""Distributed training on Ray Train (V2): ``dinowm_core.training.loop.fit`` on N DDP workers, tracked in MLflow.

    python -m ray_jobs.train env=wall data.path=/data/wall ray.num_workers=4 ray.use_gpu=true
    ray job submit --working-dir . -- python -m ray_jobs.train env=wall data.path=/abs/data/wall output_dir=/abs/out
    dinowm train env=wall data.path=data/wall ray.num_workers=2           # embedded local cluster
    dinowm train resume=wall-20261126-101500-3fa2c1                      # continue a run (name or run dir)
    dinowm train resume=/path/to/checkpoint_dir training.epochs=10        # new run starting from a checkpoint
    dinowm train resume=models:/dinowm-world-model/3                      # ... or from a logged / registered one

This module is the driver. Paths are made absolute (workers run elsewhere) and everything checkable before
workers start is checked first (config, dataset, its files and windows, encoder weights, batch divisibility,
GPUs, a ``resume=`` of the same model: ``ray_jobs.train_preflight``); each failure is a :class:`PreflightError`
and exit status 2. A failure in a worker is :class:`TrainFailed` (one line; the traceback in the run's error
log). What the workers run is in ``ray_jobs.train_worker``.

Every run gets a unique name (``<env>-<time>-<hex>``): Ray Train resumes on ``RunConfig(name, storage_path)``, so
reusing a name would silently continue an old run; ``resume=`` is the explicit way to do that.

``ray.*`` and ``mlflow.*`` keys are job settings (``ray_jobs.job_config``), not part of the model's config: the
checkpoint leaves them out, the MLflow run records them as params next to the model's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinowm_core.config import Config, ConfigError
from ray_jobs import tracking
from ray_jobs.cluster import connect
from ray_jobs.job_config import (
    JobConfig,
    load_job_config,
    load_run_config,
    resolve_paths,
    split_job_overrides,
)
from ray_jobs.runs import checkpoint_for, is_reference
from ray_jobs.train_preflight import (
    RUN_INFO,
    PreflightError,
    RunPlan,
    check_gpus,
    joins_cluster,
    plan_run,
    preflight,
    resume_config,
)
from ray_jobs.train_worker import MetricCallback, staging_root, train_loop

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_name: str
    run_dir: str
    mlflow_run_id: str
    metrics: dict[str, Any]
    checkpoint: str | None
    model_version: str | None


def _open_tracking(cfg: Config, job: JobConfig, plan: RunPlan) -> tracking.RunTracker:
    tracker = tracking.open_tracker(job.mlflow, cfg.output_dir)
    info_file = Path(plan.run_dir) / RUN_INFO
    if plan.continues and info_file.is_file():
        tracker.reopen(json.loads(info_file.read_text())["mlflow_run_id"])
        return tracker
    tags = {
        "git_commit": tracking.git_commit(Path(__file__).parent),
        "env": cfg.env.name,
        "dataset_manifest_sha256": tracking.manifest_hash(cfg.data.path),
        "dataset_path": str(cfg.data.path),
        "ray.run_dir": plan.run_dir,
    }
    # The run records where it ran too: the model's config and the job settings (ray.*, mlflow.*) as params.
    tracker.start(plan.name, {**json.loads(cfg.model_dump_json()), **json.loads(job.model_dump_json())}, tags)
    if "://" not in plan.storage_path:
        # What `dinowm train resume=<name>` needs to continue the run from its name alone.
        info = {"mlflow_run_id": tracker.run_id, "tracking_uri": tracker.uri, "config": cfg.model_dump_json(),
                "job": json.loads(job.model_dump_json())}  # fmt: skip
        info_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, info_file)
    return tracker


class TrainFailed(RuntimeError):
    """Training failed in a worker: ``cause`` is one line (exception type and message), ``log_file`` holds
    the whole traceback."""

    def __init__(self, run_name: str, run_dir: str, cause: str, log_file: str | None) -> None:
        super().__init__(cause)
        self.run_name, self.run_dir, self.cause, self.log_file = run_name, run_dir, cause, log_file


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the run keeps its checkpoints and continues with ``resume=<run_name>``."""

    def __init__(self, run_name: str, run_dir: str) -> None:
        super().__init__(run_name)
        self.run_name, self.run_dir = run_name, run_dir


def _root_cause(error: BaseException) -> BaseException:
    """The worker's own exception inside Ray Train's wrappers (``WorkerGroupError`` -> rank -> user error)."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        error = failures[min(failures)]
    error = getattr(error, "controller_failure", error)
    return getattr(error, "_base_exc", error)


def _error_log(error: BaseException, plan: RunPlan) -> str | None:
    """Write the full failure (every failed rank's traceback) next to the run's checkpoints; its path, or None."""
    if "://" in plan.storage_path:
        return None
    import traceback

    path = Path(plan.run_dir) / f"error-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(error)))  # Ray's message holds each rank's traceback
    return str(path)


def _failure(error: BaseException, plan: RunPlan, joined: bool) -> TrainFailed:
    cause = _root_cause(error)
    line = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
    if joined and isinstance(cause, (FileNotFoundError, OSError)):
        line += " (on a Ray cluster, paths must be on storage every node can read)"
    return TrainFailed(plan.name, plan.run_dir, line, _error_log(error, plan))


def worker_spec(
    cfg: Config,
    r: Any,
    name: str,
    storage_path: str,
    tracker: tracking.RunTracker,
    resume_checkpoint: str | None = None,
    metric_callbacks: Sequence[MetricCallback] = (),
) -> dict[str, Any]:
    """What every worker of one Train run receives (``ray_jobs.train_worker.train_loop``)."""
    return {
        "config": cfg.to_json(),
        "run_name": name,
        "storage_path": storage_path,
        "use_gpu": r.use_gpu,
        "cpus_per_worker": r.cpus_per_worker,
        "resume_checkpoint": resume_checkpoint,
        "tracking_uri": tracker.uri,
        "mlflow_run_id": tracker.run_id,
        "metric_callbacks": list(metric_callbacks),
    }


def build_trainer(
    spec: dict[str, Any], r: Any, *, name: str, storage_path: str, callbacks: Sequence[Any] = (),
    interruptible: bool = False,
) -> Any:  # fmt: skip
    """The ``TorchTrainer`` of one Train run (``dinowm train``, or one trial of ``dinowm tune``).

    ``callbacks``: Train V2 user callbacks (a sweep's trial passes Tune's report callback). ``interruptible``:
    Ctrl-C stops the workers and raises KeyboardInterrupt (the driver of ``dinowm train``; in a Tune trial,
    Tune owns the signal).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_jobs.train_backend import torch_config

    gpu = {"GPU": r.gpus_per_worker} if r.use_gpu else {}
    cls = _interruptible(TorchTrainer) if interruptible else TorchTrainer
    return cls(
        train_loop,
        train_loop_config=spec,
        torch_config=torch_config("nccl" if r.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.use_gpu,
            resources_per_worker={"CPU": r.cpus_per_worker, **gpu},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep),
            callbacks=list(callbacks),
            # Ray's INFO lines echo every report's full metrics dict; our workers print progress lines (steps,
            # validation, epochs).
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def run(
    cfg: Config,
    job: JobConfig | None = None,
    *,
    resume: str | None = None,
    run_name: str | None = None,
    metric_callbacks: Sequence[MetricCallback] = (),
) -> TrainOutcome:
    """Check, then train ``cfg`` on Ray Train with the job settings ``job`` (default: ``conf/job.yaml``'s).

    Raises :class:`PreflightError` before any worker starts. ``metric_callbacks`` run on rank 0 with every
    metrics row it logs, ``callback(metrics, step)`` (see :class:`~ray_jobs.train_worker.RayTrainHooks`); they
    travel to the workers pickled, so they must be importable there.
    """
    job = job or JobConfig()
    cfg, job = resolve_paths(cfg, job)
    r = job.ray
    plan = plan_run(cfg, r, resume, run_name)
    preflight(cfg, r)
    connect(r)
    check_gpus(r)
    tracker = _open_tracking(cfg, job, plan)
    spec = worker_spec(
        cfg, r, plan.name, plan.storage_path, tracker, plan.resume_checkpoint, metric_callbacks
    )
    trainer = build_trainer(spec, r, name=plan.name, storage_path=plan.storage_path, interruptible=True)
    log.info("Train run %s (storage %s, MLflow run %s)", plan.name, plan.storage_path, tracker.run_id)
    log.info("starting %d Ray Train worker(s); the first step follows once they have built the model",
             max(r.num_workers, 1))  # fmt: skip
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        tracker.end("KILLED")
        remove_staging(plan.name, r)
        raise TrainInterrupted(plan.name, plan.run_dir) from None
    except Exception as e:
        tracker.end("FAILED")
        remove_staging(plan.name, r)
        raise _failure(e, plan, joins_cluster(r)) from e
    except BaseException:
        tracker.end("FAILED")
        raise
    version = None
    if job.mlflow.register_model and tracker.has_checkpoint():
        version = tracker.register(job.mlflow.register_model)
    tracker.end("FINISHED")
    return TrainOutcome(
        run_name=plan.name,
        run_dir=plan.run_dir,
        mlflow_run_id=tracker.run_id or "",
        metrics=dict(result.metrics or {}),
        checkpoint=_persist_local_checkpoint(result.checkpoint.path if result.checkpoint else None, plan),
        model_version=version,
    )


def remove_staging(run_name: str, r: Any) -> None:
    """After a failed, interrupted or stopped run on this machine's cluster: the workers' scratch (they may have
    been stopped before removing it); a restart reads checkpoints from storage, never from there."""
    if joins_cluster(r):
        return  # the workers' nodes are not this machine
    root = staging_root(run_name)
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()


def _interruptible(trainer_cls: type) -> type:
    """``trainer_cls`` whose ``fit`` raises KeyboardInterrupt on Ctrl-C, after stopping the run's workers.

    Ray Train's own Ctrl-C handler aborts the run and then either returns from ``fit`` or exits the process
    with status 0: the driver could not tell an interrupted run from a finished one (and would record it so).
    """
    import ray

    class Interruptible(trainer_cls):
        def _register_sigint_handler(self, controller: Any) -> None:
            previous = signal.getsignal(signal.SIGINT)

            def on_sigint(signum: int, frame: Any) -> None:
                signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops the driver at once
                log.warning("Ctrl-C: stopping the Train workers (the run keeps its checkpoints)")
                with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                    ray.get(controller.abort.remote(), timeout=60)
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, on_sigint)

        def fit(self) -> Any:
            previous = signal.getsignal(signal.SIGINT)
            try:
                return super().fit()
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, previous)

    return Interruptible


def _persist_local_checkpoint(path: str | None, plan: RunPlan) -> str | None:
    """Move a checkpoint that Ray left in node-local staging into the run's storage -> its final path.

    With ``ray.num_workers=0`` Ray Train keeps the reported checkpoint where the worker wrote it (under /tmp);
    the run's result should outlive /tmp. Copied to a temporary name, then renamed, so a reader never sees a
    partial checkpoint. Remote storage (``s3://...``) keeps the staged path and says so.
    """
    root = staging_root(plan.name).resolve()
    if path is None or not Path(path).resolve().is_relative_to(root):
        return path
    if "://" in plan.storage_path:
        log.warning("checkpoint %s stays in node-local staging (remote storage %s)", path, plan.storage_path)
        return path
    src = Path(path)
    dest = Path(plan.storage_path) / plan.name / src.name
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():  # the same run's checkpoint at the same epoch and step, from an earlier attempt
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()  # <tmp>/dinowm-train, once no other run stages there
    return str(dest)


def split_args(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Config overrides (the model's and the job's) vs the run options ``resume=`` and ``run_name=``."""
    options, overrides = {}, []
    for item in args:
        key, sep, value = item.partition("=")
        if sep and key in ("resume", "run_name"):
            options[key] = value
        else:
            overrides.append(item)
    return overrides, options


def main(argv: list[str] | None = None) -> int:
    """``dinowm train`` / ``python -m ray_jobs.train``: 0 done, 1 failed in a worker, 2 bad input (nothing
    started), 130 interrupted. Failures print one line; the traceback is in the run's ``error-*.log``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides, options = split_args(sys.argv[1:] if argv is None else argv)
    resume = options.get("resume")
    try:
        if resume and is_reference(resume):  # runs:/ID[/checkpoint], models:/NAME/VERSION: a new run from it
            core, job_overrides = split_job_overrides(overrides)
            resume = str(checkpoint_for(resume, core, load_job_config(job_overrides).mlflow).resolve())
        cfg, job = resume_config(resume, overrides) if resume else load_run_config(overrides)
        outcome = run(cfg, job, resume=resume, run_name=options.get("run_name"))
    except (ConfigError, PreflightError, LookupError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainFailed as e:
        where = f"; traceback in {e.log_file}" if e.log_file else ""
        print(f"error: training failed in a worker: {e.cause}{where}", file=sys.stderr)
        print(f"  fix the cause, then continue from the last checkpoint: dinowm train resume={e.run_dir}",
              file=sys.stderr)  # fmt: skip
        return 1
    except TrainInterrupted as e:
        print(f"\ninterrupted: run {e.run_name} keeps its checkpoints in {e.run_dir}; continue it with "
              f"dinowm train resume={e.run_dir}", file=sys.stderr)  # fmt: skip
        return 130
    print(json.dumps(outcome.__dict__, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

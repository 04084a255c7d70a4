"""Distributed training on Ray Train (V2): ``dinowm_core.training.loop.fit`` on N DDP workers, tracked in MLflow.

    python -m ray_jobs.train env=wall data.path=/data/wall ray.num_workers=4 ray.use_gpu=true
    ray job submit --working-dir . -- python -m ray_jobs.train env=wall data.path=/abs/data/wall output_dir=/abs/out
    dinowm train env=wall data.path=data/wall ray.num_workers=2           # embedded local cluster
    dinowm train ... resume=wall-20261126-101500-3fa2c1                  # continue a run (name or run dir)
    dinowm train ... resume=/path/to/checkpoint_dir                       # new run starting from a checkpoint

Everything checkable before workers start is checked in the driver (config, dataset path, manifest vs env and
image size, batch divisibility, GPUs); each failure is a :class:`PreflightError` and exit status 2.

Every run gets a unique name (``<env>-<time>-<hex>``): Ray Train resumes on ``RunConfig(name, storage_path)``, so
reusing a name would silently continue an old run; ``resume=`` is the explicit way to do that.

Test-only fault injection: ``DINOWM_TEST_FAIL_AT_STEP=<step>[:raise|:kill]`` in the driver's environment makes
rank 0 raise (or SIGKILL itself) once, when it reaches that global step, to exercise ``FailureConfig``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dinowm_core.config import Config, ConfigError, load_config
from dinowm_core.data.store import DatasetError, read_manifest
from dinowm_core.data.windows import check_compatible
from dinowm_core.training.hooks import TrainHooks
from ray_jobs import tracking

log = logging.getLogger(__name__)

FAULT_ENV = "DINOWM_TEST_FAIL_AT_STEP"
RUN_INFO = "dinowm_run.json"  # next to Ray's run state: which MLflow run a Train run writes to
# Rank 0 records each checkpoint once ray.train.report has uploaded it. Ray commits a report only when its
# controller next polls the workers (every ~2 s), so a worker SIGKILLed right after reporting loses that
# checkpoint from Ray's view although it is complete on storage; the record lets a restart use it anyway.
COMMITTED = "dinowm_committed.json"


class PreflightError(ValueError):
    """A problem found in the driver before any worker starts."""


# ---- driver-side checks -----------------------------------------------------------------------------------


def preflight(cfg: Config) -> dict[str, Any]:
    """Check the dataset (env, dims, image size: ``check_compatible``) and the topology; returns the manifest."""
    r, t = cfg.ray, cfg.training
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


def new_run_name(cfg: Config) -> str:
    return f"{cfg.env.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def storage_root(cfg: Config) -> str:
    path = cfg.ray.storage_path or str(Path(cfg.output_dir) / "ray_results")
    return path if "://" in path else str(Path(path).resolve())


@dataclass(frozen=True)
class RunPlan:
    """What to run: the Train run name and storage, and where (if anywhere) it starts from."""

    name: str
    storage_path: str
    resume_checkpoint: str | None = None  # a checkpoint directory to start a *new* run from
    continues: bool = False  # the name is an existing Train run (Ray restores its latest checkpoint)


def plan_run(cfg: Config, resume: str | None = None, run_name: str | None = None) -> RunPlan:
    storage = storage_root(cfg)
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


def _fault_spec(plan: RunPlan) -> dict[str, Any] | None:
    text = os.environ.get(FAULT_ENV)
    if not text:
        return None
    step, _, mode = text.partition(":")
    base = (
        Path(plan.storage_path) / plan.name if "://" not in plan.storage_path else Path(tempfile.gettempdir())
    )
    marker = base / f".dinowm-test-fault-{plan.name}-{step}"
    return {"step": int(step), "mode": mode or "raise", "marker": str(marker)}


# ---- the worker side ----------------------------------------------------------------------------------------


class RayTrainHooks(TrainHooks):
    """Hooks for one Ray Train worker: DDP, sharded sampling, ``ray.train.report``, MLflow on rank 0."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import ray.train

        self._ctx = ray.train.get_context()
        device = self._device(spec["use_gpu"])
        run_dir = Path(tempfile.gettempdir()) / "dinowm-train" / spec["run_name"] / f"rank{self.world_rank}"
        super().__init__(device=device, resume_from=spec.get("resume_checkpoint"), run_dir=run_dir)
        self._fault = spec.get("fault")
        storage = spec.get("storage_path") or ""
        self._train_dir = Path(storage) / spec["run_name"] if storage and "://" not in storage else None
        self._logged_at: tuple[int, set[str]] = (-1, set())  # keys log_metrics wrote at the latest step
        self._logger = None
        if self.is_main() and spec.get("mlflow_run_id"):
            self._logger = tracking.WorkerLogger(spec["tracking_uri"], spec["mlflow_run_id"])

    def _device(self, use_gpu: bool) -> torch.device:
        if use_gpu and torch.cuda.is_available():
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cpu")

    @property
    def world_rank(self) -> int:
        return self._ctx.get_world_rank()

    @property
    def world_size(self) -> int:
        return self._ctx.get_world_size()

    def _distributed(self) -> bool:
        return self.world_size > 1 and torch.distributed.is_initialized()

    def wrap_model(self, module: nn.Module) -> nn.Module:
        if not self._distributed():
            return module
        import ray.train.torch

        return ray.train.torch.prepare_model(module, move_to_device=self.device)

    def make_sampler(self, dataset: Dataset, *, shuffle: bool, seed: int) -> Sampler | None:
        # Every rank sees a disjoint shard; set_epoch(epoch) reseeds the shuffle with seed + epoch.
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.world_rank, shuffle=shuffle,
                                  seed=seed)  # fmt: skip

    def wrap_loader(self, loader: DataLoader) -> DataLoader:
        return loader  # already sharded by make_sampler; fit moves batches to the device

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self._distributed():
            return values
        dist = torch.distributed
        keys: list[list[str]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(keys, sorted(values))
        names = sorted(set().union(*keys))  # a rank may lack a key (e.g. an empty validation shard)
        rows = [[values.get(k, 0.0), float(k in values)] for k in names]
        sums = torch.tensor(rows, dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        return {k: float(s / n) for k, (s, n) in zip(names, sums.tolist(), strict=True) if n > 0}

    def resume_dir(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # set after a restart, or when continuing a named run
        source = self._newer_committed(checkpoint)
        if source is None and checkpoint is None:
            return super().resume_dir()
        local = self.run_dir() / "resume"
        shutil.rmtree(local, ignore_errors=True)
        if source is not None:
            shutil.copytree(source, local)
        else:
            checkpoint.to_directory(str(local))
        log.info("rank %d resuming from %s", self.world_rank, source or checkpoint.path)
        return local

    def _newer_committed(self, checkpoint: Any) -> Path | None:
        """The checkpoint rank 0 recorded as uploaded, if Ray's latest is older (see ``COMMITTED``)."""
        record = self._train_dir / COMMITTED if self._train_dir else None
        if record is None or not record.is_file():
            return None
        committed = json.loads(record.read_text())
        path = self._train_dir / committed["name"]
        ray_step = -1
        if checkpoint is not None:
            ray_step = json.loads((Path(checkpoint.path) / "meta.json").read_text()).get("step", -1)
        return path if committed["step"] > ray_step and (path / "config.json").is_file() else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        import ray.train

        checkpoint = name = None
        if checkpoint_dir is not None and self.is_main():
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
            name = f"checkpoint_{Path(checkpoint_dir).name}"
        # A barrier: every rank calls it. SYNC upload: the checkpoint is on storage when it returns.
        ray.train.report(dict(metrics), checkpoint=checkpoint, checkpoint_dir_name=name)
        if self.is_main():
            self._prune_local_checkpoints(keep=checkpoint_dir)
            if name is not None and self._train_dir is not None:
                record = self._train_dir / COMMITTED
                tmp = record.with_suffix(".tmp")
                tmp.write_text(json.dumps({"name": name, "step": int(metrics.get("step", -1))}))
                os.replace(tmp, record)
            if self._logger is not None and "step" in metrics:
                step = int(metrics["step"])
                seen = self._logged_at[1] if self._logged_at[0] == step else set()
                self._logger.log_metrics({k: v for k, v in metrics.items() if k not in seen}, step)

    def _prune_local_checkpoints(self, keep: Path | None) -> None:
        """Ray has persisted the reported checkpoint; local copies other than the latest are garbage."""
        root = self.checkpoint_root()
        if keep is None or not root.is_dir():
            return
        for path in root.iterdir():
            if path.is_dir() and path.resolve() != Path(keep).resolve():
                shutil.rmtree(path, ignore_errors=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._logger is not None:
            self._logger.log_metrics(metrics, step)
            seen = self._logged_at[1] if self._logged_at[0] == step else set()
            self._logged_at = (step, seen | set(metrics))
        self._maybe_fail(step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._logger is not None:
            self._logger.log_artifact(path, artifact_path)

    def _maybe_fail(self, step: int) -> None:
        """Test-only fault injection (see the module docstring); fires once per run."""
        fault = self._fault
        if not fault or step != fault["step"] or os.path.exists(fault["marker"]):
            return
        Path(fault["marker"]).touch()
        log.warning("test fault injection at step %d: %s", step, fault["mode"])
        if fault["mode"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"test fault injected at step {step} ({FAULT_ENV})")


def _worker_logging() -> None:
    """INFO lines of our loggers to stdout, which Ray forwards to the driver (progress, ETA)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("dinowm_core", "ray_jobs"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # DDP notes that the decoder's channels-last 1x1 conv grads are copied into its buckets (a small copy, not
    # an error); once per worker is noise in the driver's output.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Train V2 logs every report's whole metrics dict at INFO from a logger named after its file path (not
    # covered by LoggingConfig); our own per-epoch line says the same in one line.
    try:
        from ray.train.v2._internal.execution import context as _train_context

        logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - Ray internals moved
        pass


def train_loop(spec: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    from dinowm_core.training.loop import fit

    _worker_logging()
    torch.set_num_threads(max(1, int(spec["cpus_per_worker"])))
    hooks = RayTrainHooks(spec)
    result = fit(Config.from_json(spec["config"]), hooks)
    if hooks.is_main() and hooks._logger is not None and result.checkpoint is not None:
        hooks.log_artifact(result.checkpoint, tracking.CHECKPOINT_ARTIFACT)


# ---- the driver -------------------------------------------------------------------------------------------------


def connect(cfg: Config) -> None:
    """Join the cluster named by ``ray.address`` / ``$RAY_ADDRESS``, else start a small embedded one."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address if cfg.ray.address else "auto")
        return
    needed = max(cfg.ray.num_workers, 1) * cfg.ray.cpus_per_worker
    ray.init(
        num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)),
        object_store_memory=256 * 1024**2,  # Train moves checkpoints through storage, not the object store
        include_dashboard=True,  # without it Train logs "State API may be temporarily unavailable" every second
        dashboard_host="127.0.0.1",
        _temp_dir=os.environ.get("RAY_TMPDIR", str(Path(tempfile.gettempdir()) / "dwm-ray")),
    )


def _check_gpus(cfg: Config) -> None:
    import ray

    if cfg.ray.use_gpu:
        have = ray.cluster_resources().get("GPU", 0)
        if have < max(cfg.ray.num_workers, 1):
            raise PreflightError(
                f"ray.use_gpu=true needs {max(cfg.ray.num_workers, 1)} GPUs; the cluster has {have:g}"
            )


@dataclass
class TrainOutcome:
    run_name: str
    run_dir: str
    mlflow_run_id: str
    metrics: dict[str, Any]
    checkpoint: str | None
    model_version: str | None


def _open_tracking(cfg: Config, plan: RunPlan, manifest: dict[str, Any]) -> tracking.RunTracker:
    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri, cfg.output_dir)
    tracker = tracking.RunTracker(
        uri, cfg.mlflow.experiment, tracking.default_artifact_location(uri, cfg.output_dir)
    )
    info_file = Path(plan.storage_path) / plan.name / RUN_INFO
    if plan.continues and info_file.is_file():
        tracker.reopen(json.loads(info_file.read_text())["mlflow_run_id"])
        return tracker
    tags = {
        "git_commit": tracking.git_commit(Path(__file__).parent),
        "env": cfg.env.name,
        "dataset_manifest_sha256": tracking.manifest_hash(cfg.data.path),
        "dataset_path": str(cfg.data.path),
        "ray.run_dir": f"{plan.storage_path}/{plan.name}",
    }
    tracker.start(plan.name, json.loads(cfg.model_dump_json()), tags)
    if "://" not in plan.storage_path:
        info_file.parent.mkdir(parents=True, exist_ok=True)
        info_file.write_text(json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": uri}))
    return tracker


def run(cfg: Config, *, resume: str | None = None, run_name: str | None = None) -> TrainOutcome:
    """Check, then train ``cfg`` on Ray Train; raises :class:`PreflightError` before any worker starts."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    manifest = preflight(cfg)
    plan = plan_run(cfg, resume, run_name)
    connect(cfg)
    _check_gpus(cfg)
    tracker = _open_tracking(cfg, plan, manifest)
    r = cfg.ray
    spec = {
        "config": cfg.to_json(),
        "run_name": plan.name,
        "storage_path": plan.storage_path,
        "use_gpu": r.use_gpu,
        "cpus_per_worker": r.cpus_per_worker,
        "resume_checkpoint": plan.resume_checkpoint,
        "tracking_uri": tracker.uri,
        "mlflow_run_id": tracker.run_id,
        "fault": _fault_spec(plan),
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=spec,
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.use_gpu,
            resources_per_worker={"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})},
        ),  # fmt: skip
        run_config=RunConfig(
            name=plan.name,
            storage_path=plan.storage_path,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep),
            # Ray's INFO lines echo every report's full metrics dict; our workers print one line per epoch.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    log.info("Train run %s (storage %s, MLflow run %s)", plan.name, plan.storage_path, tracker.run_id)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    version = None
    if cfg.mlflow.register_model and tracker.has_checkpoint():
        version = tracker.register(cfg.mlflow.register_model)
    tracker.end("FINISHED")
    return TrainOutcome(
        run_name=plan.name,
        run_dir=f"{plan.storage_path}/{plan.name}",
        mlflow_run_id=tracker.run_id or "",
        metrics=dict(result.metrics or {}),
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        model_version=version,
    )


def split_args(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Config overrides vs the run options ``resume=`` and ``run_name=`` (not config keys)."""
    options, overrides = {}, []
    for item in args:
        key, sep, value = item.partition("=")
        if sep and key in ("resume", "run_name"):
            options[key] = value
        else:
            overrides.append(item)
    return overrides, options


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides, options = split_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(overrides)
        outcome = run(cfg, resume=options.get("resume"), run_name=options.get("run_name"))
    except (ConfigError, PreflightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(outcome.__dict__, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The worker side of ``ray_jobs.train``: what every Ray Train (V2) worker runs, and its :class:`TrainHooks`.

``train_loop`` runs ``dinowm_core.training.loop.fit`` with :class:`RayTrainHooks`: DDP, sharded sampling,
``ray.train.report`` and MLflow logging on rank 0. Each rank stages checkpoints and artifacts in a node-local
directory (:func:`staging_root`), which is removed once the run no longer needs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dinowm_core.config import Config
from dinowm_core.training.hooks import TrainHooks
from ray_jobs import tracking
from ray_jobs.cluster import torch_cache_dir

log = logging.getLogger(__name__)

#: ``callback(metrics, step)``: called on rank 0 with every metrics row it logs (``ray_jobs.train.run``)
MetricCallback = Callable[[dict[str, float], int], None]
# Rank 0 records each checkpoint once ray.train.report has uploaded it. Ray commits a report only when its
# controller next polls the workers (every ~2 s), so a worker SIGKILLed right after reporting loses that
# checkpoint from Ray's view although it is complete on storage; the record lets a restart use it anyway.
COMMITTED = "dinowm_committed.json"


def staging_root(run_name: str) -> Path:
    """Node-local scratch of one Train run (``<tmp>/dinowm-train/<run>``), one ``rank<N>`` directory per worker."""
    return Path(tempfile.gettempdir()) / "dinowm-train" / run_name


def _remove_except(root: Path, keep: Path) -> None:
    """Delete everything under ``root`` but ``keep`` (a path inside it) and the directories leading to it."""
    for path in root.iterdir():
        if path == keep:
            continue
        if keep.is_relative_to(path):
            _remove_except(path, keep)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _restrided(shape: torch.Size, stride: tuple[int, ...], grad: torch.Tensor) -> torch.Tensor:
    if grad.stride() == stride or any(
        g != p and n != 1 for g, p, n in zip(grad.stride(), stride, shape, strict=True)
    ):
        return grad
    return grad.as_strided(shape, stride, grad.storage_offset())  # same elements, same memory: a free view


def _match_grad_strides(module: nn.Module) -> None:
    """Label each grad with its parameter's strides where they differ only on size-1 dims.

    The decoder runs channels-last, so oneDNN returns a 1x1 conv's weight grad (O, I, 1, 1) with strides
    (I, 1, I, I) against the parameter's (I, 1, 1, 1): the same memory. Autograd stores it as is, but DDP compares
    strides strictly and warns "Grad strides do not match bucket view strides" on every worker. The hook runs
    before the grad is stored and only relabels it (measured: identical losses, no slower).
    """
    for param in module.parameters():
        if param.requires_grad and 1 in param.shape:  # strides on size-1 dims are the only free difference
            param.register_hook(partial(_restrided, param.shape, param.stride()))


class RayTrainHooks(TrainHooks):
    """Hooks for one Ray Train worker: DDP, sharded sampling, ``ray.train.report``, MLflow on rank 0.

    ``spec["metric_callbacks"]`` (:data:`MetricCallback`) see every metrics row rank 0 logs, after MLflow has it:
    per-step training rows every ``training.log_every_steps`` and the validation rows. A callback that raises
    fails the worker like any training error (``ray.max_failures`` restarts it from the last checkpoint).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import ray.train

        self._ctx = ray.train.get_context()
        device = self._device(spec["use_gpu"])
        run_dir = staging_root(spec["run_name"]) / f"rank{self.world_rank}"
        super().__init__(device=device, resume_from=spec.get("resume_checkpoint"), run_dir=run_dir)
        self._callbacks: list[MetricCallback] = list(spec.get("metric_callbacks") or [])
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

        _match_grad_strides(module)
        # the steps between the decoder's turns (training.decoder_every_steps) leave its parameters unused
        cfg = getattr(getattr(module, "wm", None), "cfg", None)
        unused = cfg is not None and cfg.training.decoder_every_steps > 1
        return ray.train.torch.prepare_model(
            module, move_to_device=self.device, parallel_strategy_kwargs={"find_unused_parameters": unused}
        )

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
        """Ray has the reported checkpoint; staged ones before it are garbage.

        The latest stays staged until :meth:`remove_staging`: rank 0 logs the final one to MLflow after ``fit``,
        and with ``num_workers=0`` Ray's result points at it (nothing is copied to storage). The loop reports
        each checkpoint directory once: Ray deletes a pruned registration's files, even when a newer
        registration points at the same directory.
        """
        root = self.checkpoint_root()
        if keep is None or not root.is_dir():
            return
        for path in root.iterdir():
            if path.is_dir() and path.resolve() != Path(keep).resolve():
                shutil.rmtree(path, ignore_errors=True)

    def remove_staging(self) -> None:
        """End of training: delete this rank's staging directory, then the run's root once every rank has.

        Never the directory Ray's latest checkpoint points at: with ``ScalingConfig(num_workers=0)`` (local
        mode) ``ray.train.report`` keeps the checkpoint where it is and the run's result refers to it there.
        """
        import ray.train

        own = self.run_dir().resolve()
        if not own.is_dir():
            return
        committed = ray.train.get_checkpoint()
        keep = (
            Path(committed.path) if committed is not None else None
        )  # a remote path is relative: never ours
        if keep is not None and keep.is_absolute() and keep.resolve().is_relative_to(own):
            _remove_except(own, keep.resolve())
            return
        shutil.rmtree(own, ignore_errors=True)
        with contextlib.suppress(OSError):  # ranks on one node finish in any order: the last one removes it
            own.parent.rmdir()
            own.parent.parent.rmdir()  # <tmp>/dinowm-train, once no other run stages there

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._logger is not None:
            self._logger.log_metrics(metrics, step)
            seen = self._logged_at[1] if self._logged_at[0] == step else set()
            self._logged_at = (step, seen | set(metrics))
        for callback in self._callbacks:
            callback(metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._logger is not None:
            self._logger.log_artifact(path, artifact_path)


def _worker_logging() -> None:
    """INFO lines of our loggers to stdout, which Ray forwards to the driver (progress, ETA)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("dinowm_core", "ray_jobs"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # Train V2 logs every report's whole metrics dict at INFO from a logger named after its file path (not
    # covered by LoggingConfig); our own per-epoch line says the same in one line.
    try:
        from ray.train.v2._internal.execution import context as _train_context

        logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - Ray internals moved
        pass
    # Ray logs a failed train function's whole traceback from every rank; the driver writes it to the run's
    # error log and prints one line, and train_loop logs one line per failure here (so restarts show).
    logging.getLogger("ray.train.v2._internal.util").setLevel(logging.CRITICAL)


def train_loop(spec: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    from dinowm_core.training.loop import fit

    _worker_logging()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", torch_cache_dir())  # not the temp dir (joined clusters)
    torch.set_num_threads(max(1, int(spec["cpus_per_worker"])))
    hooks = RayTrainHooks(spec)
    try:
        result = fit(Config.from_json(spec["config"]), hooks)
        if hooks.is_main() and hooks._logger is not None and result.checkpoint is not None:
            hooks.log_artifact(result.checkpoint, tracking.CHECKPOINT_ARTIFACT)
    except Exception as e:
        log.error("rank %d failed: %s: %s", hooks.world_rank, type(e).__name__, str(e).strip().split("\n")[0])
        raise
    finally:
        # Also after a failure: a restarted worker resumes from storage, never from this directory.
        hooks.remove_staging()

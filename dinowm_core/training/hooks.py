"""The seam between the training loop and whatever runs it (a plain process, Ray Train, a test).

``fit(cfg, hooks)`` never imports a framework: everything that depends on *where* it runs goes through a
``TrainHooks`` object. ``TrainHooks`` itself is the identity implementation for a single plain process;
``ray_jobs.train`` subclasses it for Ray Train workers (DDP wrapping, sharded loading, ``ray.train.report``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler


class TrainHooks:
    """Identity hooks: one process, rank 0 of 1, CPU unless ``device`` says otherwise."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        resume_from: str | Path | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._resume_from = Path(resume_from) if resume_from else None
        self._run_dir = Path(run_dir) if run_dir else Path(".")
        self.reported: list[dict[str, Any]] = []

    # ---- topology -------------------------------------------------------------------------------
    @property
    def world_rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def is_main(self) -> bool:
        return self.world_rank == 0

    # ---- model and data -------------------------------------------------------------------------
    def wrap_model(self, module: nn.Module) -> nn.Module:
        """Wrap the trainable module (e.g. in DistributedDataParallel); identity here."""
        return module

    def make_sampler(self, dataset: Dataset, *, shuffle: bool, seed: int) -> Sampler | None:
        """The sampler for ``dataset``; must support ``set_epoch(epoch)`` when shuffling."""
        from dinowm_core.data.windows import EpochShuffleSampler

        return EpochShuffleSampler(len(dataset), seed=seed) if shuffle else None

    def wrap_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks; identity for one process."""
        return values

    # ---- results --------------------------------------------------------------------------------
    def resume_dir(self) -> Path | None:
        """A checkpoint directory to resume from (None = fresh start)."""
        return self._resume_from

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        """Called by every rank at the end of each epoch; only the main rank passes a checkpoint."""
        self.reported.append({"metrics": dict(metrics), "checkpoint": checkpoint_dir})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-step metrics (main rank only calls this). Plain process: nothing (the loop logs progress)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """An image / video / directory worth keeping with the run (main rank only)."""

    def checkpoint_root(self) -> Path:
        """Where the main rank writes checkpoint directories before reporting them."""
        return self._run_dir / "checkpoints"

    def run_dir(self) -> Path:
        """Where the main rank writes artifacts (image grids, rollout videos) before logging them."""
        return self._run_dir

"""Test helpers for the training tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

from dinowm_core.training.hooks import TrainHooks


class RecordingHooks(TrainHooks):
    """Identity hooks that also keep what the loop logs."""

    def __init__(self, run_dir: Path, **kw) -> None:
        super().__init__(device="cpu", run_dir=run_dir, **kw)
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[Path] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, dict(metrics)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append(Path(path))

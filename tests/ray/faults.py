"""Fault injection for the Ray Train tests: a metric callback (``ray_jobs.train.run(metric_callbacks=...)``) that
makes rank 0 fail once, when it logs a given global step.

It travels to the workers pickled (by reference: workers import this module) and fires once per run: the marker
file, on storage the restarted worker sees too, says it already fired.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailOnce:
    step: int
    mode: str  # "raise": an exception in the worker; "kill": SIGKILL of the worker process
    marker: str

    def __post_init__(self) -> None:
        if self.mode not in ("raise", "kill"):
            raise ValueError(f"mode must be 'raise' or 'kill', got {self.mode!r}")

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if step != self.step or os.path.exists(self.marker):
            return
        Path(self.marker).touch()
        log.warning("test fault injection at step %d: %s", step, self.mode)
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"test fault injected at step {step}")


@dataclass(frozen=True)
class FailAlways:
    """Rank 0 raises at the first metrics row it logs: a run (or a resume attempt) that cannot succeed."""

    message: str = "test fault: this run cannot succeed"

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        raise RuntimeError(self.message)

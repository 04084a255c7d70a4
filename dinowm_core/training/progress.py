"""Console progress of ``fit`` on the main rank: step lines with loss and ETA, validation, and one line per epoch.

Step and validation-batch lines are time-based (``training.progress_every_s``, default 30 s) rather than every
``training.log_every_steps`` (the period of the MLflow rows): a 20-step smoke run and a 100k-step run both print
about twice a minute, whatever their step time. The line due at an epoch's last step is left out: the epoch line
follows. Validation always prints a start and a done line with its duration. Other ranks print nothing.
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger(__name__)


def hms(seconds: float) -> str:
    """``3725.2 -> '1:02:05'``; hours are not wrapped at a day; ``'?'`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Progress lines of one ``fit`` call; every method is a no-op unless ``enabled`` (the main rank)."""

    def __init__(self, *, enabled: bool, every_s: float, epochs: int, total_steps: int, steps_per_epoch: int,
                 samples_per_step: int) -> None:  # fmt: skip
        self.enabled, self.every_s = enabled, every_s
        self.epochs, self.total_steps, self.steps_per_epoch = epochs, total_steps, steps_per_epoch
        self.samples_per_step = samples_per_step
        self.start(0)

    def start(self, step: int) -> None:
        """Start the ETA clock at global step ``step`` (validation time counts: it recurs every epoch)."""
        self._t0 = time.perf_counter()
        self._step0 = step
        self._val_t0 = self._val_last = self._t0
        self.window_start(step)

    def window_start(self, step: int) -> None:
        """Before training steps: the next step line's loss and speed cover the steps from here."""
        self._last, self._last_step, self._loss, self._n = time.perf_counter(), step, 0.0, 0

    def eta_s(self, step: int, now: float | None = None) -> float:
        elapsed = (time.perf_counter() if now is None else now) - self._t0
        done = step - self._step0
        return (self.total_steps - step) * elapsed / done if done > 0 and elapsed > 0 else math.inf

    def step(self, epoch: int, batch_in_epoch: int, step: int, loss: float, *, last: bool) -> None:
        """After each optimizer step; ``last``: the epoch (or the run) ends with this step."""
        if not self.enabled:
            return
        self._loss, self._n = self._loss + loss, self._n + 1
        now = time.perf_counter()
        if last or now - self._last < self.every_s:
            return
        rate = (step - self._last_step) / (now - self._last) if now > self._last else math.nan
        log.info("epoch %d/%d step %d/%d (batch %d/%d) | train/loss %.4g | %.2f steps/s, %.1f samples/s | ETA %s",
                 epoch + 1, self.epochs, step, self.total_steps, batch_in_epoch, self.steps_per_epoch,
                 self._loss / self._n, rate, rate * self.samples_per_step, hms(self.eta_s(step, now)))  # fmt: skip
        self._last, self._last_step, self._loss, self._n = now, step, 0.0, 0

    def validation_start(self, batches: int, rollouts: int) -> None:
        self._val_t0 = self._val_last = time.perf_counter()
        if self.enabled:
            log.info("validating: %d batches, %d open-loop rollouts", batches, rollouts)

    def validation_batch(self, done: int, batches: int) -> None:
        if not self.enabled or done >= batches:
            return
        now = time.perf_counter()
        if now - self._val_last < self.every_s:
            return
        elapsed = now - self._val_t0
        log.info("validation batch %d/%d | %s elapsed, ETA %s", done, batches, hms(elapsed),
                 hms(elapsed * (batches - done) / done))  # fmt: skip
        self._val_last = now

    def validation_end(self, metrics: dict[str, float]) -> None:
        if self.enabled:
            seconds, loss = time.perf_counter() - self._val_t0, metrics.get("val/loss", math.nan)
            log.info("validation done in %.1f s | val/loss %.4g", seconds, loss)

    def epoch_end(
        self, epoch: int, step: int, metrics: dict[str, float], epoch_s: float, epoch_steps: int
    ) -> None:
        """The line once an epoch's metrics are known (``epoch``: 1-based, the one that just ran)."""
        if not self.enabled:
            return
        samples_s = epoch_steps * self.samples_per_step / epoch_s if epoch_s > 0 else 0.0
        log.info("epoch %d/%d step %d/%d | train/loss %.4g val/loss %.4g | %.1f samples/s | ETA %s",
                 epoch, self.epochs, step, self.total_steps, metrics.get("train/loss", math.nan),
                 metrics.get("val/loss", math.nan), samples_s, hms(self.eta_s(step)))  # fmt: skip

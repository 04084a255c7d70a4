"""What a running sweep prints: a line per finished or failed trial, and a status line every ``every_s`` seconds
(trials running / finished / failed / pending, the best so far). Tune's own tables are off (``verbose=0``):
they print every trial's every report, which for training trials is every epoch of every trial."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

from ray.tune import Callback

log = logging.getLogger("ray_jobs.tune")


def _short(config: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={config[k]:.3g}" if isinstance(config.get(k), float)
                     else f"{k.rsplit('.', 1)[-1]}={config.get(k)}" for k in keys if k in config)  # fmt: skip


class SweepProgress(Callback):
    """Driver-side progress of a sweep (a Tune callback; picklable, Tune keeps it with the experiment)."""

    def __init__(self, state: dict[str, Any], every_s: float) -> None:
        self.metric, self.mode, self.keys = state["metric"], state["mode"], list(state["keys"])
        self.name = state["name"]
        self.every_s = every_s
        self.best: tuple[float, str, str] | None = None  # (value, trial id, its params)
        self._last = 0.0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best[0] if self.mode == "min" else value > self.best[0]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value) and self._better(value):
            self.best = (float(value), trial.trial_id, _short(trial.config, self.keys))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{value:.4g}" if isinstance(value, int | float) else "none"
        log.info("trial %s finished after %s report(s): %s %s (%s)", trial.trial_id,
                 last.get("training_iteration", 0), self.metric, shown, _short(trial.config, self.keys))  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.warning("trial %s failed (%s); its error is in %s", trial.trial_id,
                    _short(trial.config, self.keys), getattr(trial, "path", None) or "the sweep directory")  # fmt: skip

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        counts = Counter(t.status for t in trials)
        shown = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        best = (f"; best {self.metric} {self.best[0]:.4g} (trial {self.best[1]}: {self.best[2]})"
                if self.best else "")  # fmt: skip
        log.info("sweep %s: %s%s", self.name, shown or "starting", best)

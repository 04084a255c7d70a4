"""What an evaluation reports (reference section 5.7): success with Wilson intervals, goal distances,
per-seed and pooled summaries, the protocol label, and the result's JSON / MLflow forms.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinowm_core.config import Config
from dinowm_core.evaluation.records import EpisodeMetrics, Obs

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and n, unlike the normal one)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact ends at 0 and n (the formula leaves rounding residue of ~1e-17 there).
    lo = 0.0 if successes == 0 else min(p, center - half)
    hi = 1.0 if successes == n else max(p, center + half)
    return (lo, hi)


def goal_distances(final: Obs, goal: Obs) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode mean |final - goal| over raw pixels (0-255) and over raw proprio (reference 5.7).

    The reference takes ``norm(e_obs - obs_g, axis=1)`` along a length-1 time axis, i.e. an element-wise
    absolute difference, then the mean; on uint8 frames its subtraction wraps around, so we subtract in float.
    """

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
        return np.abs(diff).reshape(len(diff), -1).mean(1)

    return dist(final["visual"], goal["visual"]), dist(final["proprio"], goal["proprio"])


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rates with 95% Wilson intervals and means of the numeric per-episode metrics."""
    n = len(metrics)
    k = sum(m["success"] for m in metrics)
    k_any = sum(m["success_any_step"] for m in metrics)
    out: dict[str, Any] = {
        "n": n,
        "success_rate": k / n if n else float("nan"),
        "success_ci95": list(wilson_interval(k, n)),
        "success_any_step_rate": k_any / n if n else float("nan"),
        "success_any_step_ci95": list(wilson_interval(k_any, n)),
    }
    skip = {
        "seed",
        "index",
        "episode_seed",
        "success",
        "success_any_step",
        "first_success_step",
        "stopped_by_oracle",
    }
    keys = [key for key in metrics[0] if key not in skip] if metrics else []
    for key in keys:
        vals = [
            m[key] for m in metrics if isinstance(m.get(key), int | float) and not isinstance(m[key], bool)
        ]
        if vals:
            out[f"mean_{key}"] = float(np.mean(vals))
    return out


@dataclass
class EvalResult:
    """An evaluation: its protocol, every episode's metrics by eval seed, and the videos written."""

    protocol: dict[str, Any]
    per_seed: dict[int, list[EpisodeMetrics]] = field(default_factory=dict)
    videos: list[str] = field(default_factory=list)

    def episodes(self, seed: int | None = None) -> list[EpisodeMetrics]:
        """The episodes of ``seed`` (all seeds, in seed order, when None)."""
        if seed is not None:
            return self.per_seed[seed]
        return [m for eps in self.per_seed.values() for m in eps]

    def summary(self, seed: int | None = None) -> dict[str, Any]:
        return summarize([m.to_dict() for m in self.episodes(seed)])

    def to_dict(self) -> dict[str, Any]:
        per_seed = {
            str(s): {"summary": self.summary(s), "episodes": [m.to_dict() for m in eps]}
            for s, eps in self.per_seed.items()
        }
        summaries = [v["summary"]["success_rate"] for v in per_seed.values()]
        pooled = {**self.summary(), "seed_success_rate_std": float(np.std(summaries)) if summaries else None}
        return {"protocol": self.protocol, "pooled": pooled, "per_seed": per_seed, "videos": self.videos}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def flat_metrics(self, prefix: str = "plan") -> dict[str, float]:
        """Pooled and per-seed scalars with slash-namespaced names (for MLflow)."""
        out = {}
        for name, summ in [("", self.summary())] + [(f"seed{s}/", self.summary(s)) for s in self.per_seed]:
            for k, v in summ.items():
                if isinstance(v, list):
                    out[f"{prefix}/{name}{k}_lo"], out[f"{prefix}/{name}{k}_hi"] = float(v[0]), float(v[1])
                elif isinstance(v, int | float):
                    out[f"{prefix}/{name}{k}"] = float(v)
        return out


def policy_name(cfg: Config) -> str:
    return "random" if cfg.eval.policy == "random" else cfg.planner.name


def protocol_label(cfg: Config) -> str:
    """What an episode actually runs: open-loop planners execute one plan (``horizon * frameskip`` env steps,
    cut at the budget); MPC and the random baseline run chunks to the budget, or to an oracle stop."""
    e, p = cfg.eval, cfg.planner
    chunk = (p.mpc.n_taken_actions if p.name.startswith("mpc_") else p.horizon) * cfg.frameskip
    if e.policy == "planner" and not p.name.startswith("mpc_"):
        steps = min(chunk, e.budget)
        cut = f", cut to the budget of {e.budget}" if chunk > e.budget else ""
        return (f"open loop: one plan of {p.horizon} model steps, {steps} env steps executed{cut}; "
                f"success judged at the end of the plan, no replanning")  # fmt: skip
    if e.oracle_stop:
        return (f"oracle stop (reference protocol): success checked after each executed chunk of {chunk} env "
                f"steps, an episode ends at the first such success or at the budget of {e.budget} env steps")  # fmt: skip
    return f"fixed budget of {e.budget} env steps in chunks of {chunk}, success judged at the end, no oracle stop"


def protocol(cfg: Config) -> dict[str, Any]:
    e = cfg.eval
    label = protocol_label(cfg)
    return {
        **e.model_dump(),
        "label": label,
        "policy": policy_name(cfg),
        "env": cfg.env.name,
        "frameskip": cfg.frameskip,
        "planner": cfg.planner.model_dump() if e.policy == "planner" else None,
    }

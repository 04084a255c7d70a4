"""Per-episode scores of the memory tasks from imagined latents, and their summaries with 95% intervals.

* choice tasks: the candidate whose frames at the probe steps are nearest (latent MSE, summed over probe steps)
  to the imagined frames is the model's answer; ties (an imagination equally far from two worlds) are broken by
  the episode's seed, so an uninformed model scores chance in expectation. Rates get Wilson intervals.
* loop closure and error vs horizon: visual-latent MSE between imagined and true frames. Means get percentile
  bootstrap intervals (fixed resampling seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dinowm_core.evaluation.report import wilson_interval


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """(N, P, D) x (N, P, D) -> per-frame MSE (N,)"""
    return (a.float() - b.float()).square().flatten(1).mean(1).cpu().numpy()


def choose(
    imagined: torch.Tensor, candidates: torch.Tensor, rng: np.random.Generator
) -> tuple[int, np.ndarray]:
    """imagined (J, P, D), candidates (C, J, P, D) -> (the nearest candidate, distances (C,))."""
    dist = (candidates.float() - imagined.float()[None]).square().flatten(2).mean(2).sum(1).cpu().numpy()
    best = np.flatnonzero(dist == dist.min())
    return int(best[rng.integers(len(best))]), dist


def rate_summary(hits: list[bool] | np.ndarray, chance: float | None = None) -> dict[str, Any]:
    hits = np.asarray(hits, bool)
    n, k = len(hits), int(hits.sum())
    out = {"n": n, "rate": k / n if n else float("nan"), "ci95": list(wilson_interval(k, n))}
    if chance is not None:
        out["chance"] = chance
    return out


def mean_summary(values: list[float] | np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return {"n": 0, "mean": float("nan"), "ci95": [float("nan"), float("nan")]}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(len(v), size=(resamples, len(v)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"n": len(v), "mean": float(v.mean()), "ci95": [float(lo), float(hi)]}


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: ``memory/<task>/<name>`` for the pooled numbers (rates, means and interval ends)."""
    out: dict[str, float] = {}
    for task, t in result["tasks"].items():
        pooled = t.get("pooled", {})
        for name, v in pooled.items():
            if isinstance(v, dict):
                out[f"memory/{task}/{name}"] = v["mean"]
                out[f"memory/{task}/{name}_lo"], out[f"memory/{task}/{name}_hi"] = v["ci95"]
            elif name in ("rate", "n", "chance"):
                out[f"memory/{task}/{name}"] = v
            elif name == "ci95":
                out[f"memory/{task}/rate_lo"], out[f"memory/{task}/rate_hi"] = v
        for h, v in zip(t.get("horizons", []), t.get("mse", []), strict=False):
            out[f"memory/error_horizon/mse_h{h:03d}"] = v["mean"]
    return {k: float(v) for k, v in out.items()}

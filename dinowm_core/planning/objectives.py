"""Planning objective: distance between imagined latents and the goal's latents (reference section 5.3).

``mode="last"`` (every released config): mean squared error on the final predicted frame, visual patches plus
``alpha`` times the proprio *embedding* term. ``mode="all"``: the per-frame errors over all H + 1 frames weighted
by ``base**i / sum_j base**j``. Deliberate deviation (bug 14): the reference additionally averages the weighted
errors over frames (an extra 1/(H+1) factor); we return the weighted sum, so the weights sum to one.
"""

from __future__ import annotations

from typing import Literal

import torch

Obs = dict[str, torch.Tensor]


def _frame_errors(pred: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """pred (N, T, ...), goal broadcastable -> mean squared error per frame (N, T)"""
    se = (pred - goal).square()
    return se.flatten(2).mean(dim=2)


def objective(
    z_pred: Obs,
    z_goal: Obs,
    *,
    mode: Literal["last", "all"] = "last",
    alpha: float = 1.0,
    base: float = 2.0,
) -> torch.Tensor:
    """z_pred visual (N, H+1, P, Dv), proprio (N, H+1, Dp); z_goal visual (N|1, 1, P, Dv), proprio (N|1, 1, Dp)
    -> loss (N,), lower is better."""
    vis, prop = z_pred["visual"], z_pred["proprio"]
    if mode == "last":
        vis, prop = vis[:, -1:], prop[:, -1:]
    elif mode != "all":
        raise ValueError(f"objective mode must be 'last' or 'all', got {mode!r}")
    per_frame = _frame_errors(vis.float(), z_goal["visual"].float())
    if alpha:
        per_frame = per_frame + alpha * _frame_errors(prop.float(), z_goal["proprio"].float())
    if mode == "last":
        return per_frame[:, 0]
    weights = torch.as_tensor(base, dtype=torch.float64) ** torch.arange(
        per_frame.shape[1], dtype=torch.float64
    )
    weights = (weights / weights.sum()).to(per_frame)
    return per_frame @ weights

"""Typed records of an evaluation: what one episode measured and what the model side needs from it.

:class:`EpisodeMetrics` is the JSON-able part (``results.json``'s per-episode rows, MLflow's aggregates);
:class:`EpisodeOutcome` adds the arrays the model side uses afterwards (first and last observations, the executed
actions, recorded frames). Both are plain dataclasses, so an env process or Ray actor can return them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Obs = dict[str, np.ndarray]


@dataclass
class EpisodeMetrics:
    """One episode. ``final`` holds the env's own end-of-budget measures (``distance``, ``chamfer``, ...)."""

    index: int
    episode_seed: int
    success: bool
    success_any_step: bool
    first_success_step: int | None
    min_distance: float
    env_steps: int
    stopped_by_oracle: bool
    final: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    #: filled by the evaluation loop: planner calls, their seconds (a batched call's time is shared by its
    #: episodes), and the raw pixel / proprio distances between the final and the goal observation
    plan_calls: int = 0
    plan_seconds: float = 0.0
    plan_s_per_step: float = 0.0
    visual_dist: float | None = None
    proprio_dist: float | None = None
    #: embedding divergence between the imagined and the real final frame (None when not imagined)
    div_visual_emb: float | None = None
    div_proprio_emb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat results.json row (the env's measures inline, as before the records were typed)."""
        return {
            "seed": self.seed,
            "index": self.index,
            "episode_seed": self.episode_seed,
            "success": self.success,
            "success_any_step": self.success_any_step,
            "first_success_step": self.first_success_step,
            **self.final,
            "min_distance": self.min_distance,
            "env_steps": self.env_steps,
            "stopped_by_oracle": self.stopped_by_oracle,
            "plan_calls": self.plan_calls,
            "plan_seconds": self.plan_seconds,
            "plan_s_per_step": self.plan_s_per_step,
            "visual_dist": self.visual_dist,
            "proprio_dist": self.proprio_dist,
            "div_visual_emb": self.div_visual_emb,
            "div_proprio_emb": self.div_proprio_emb,
        }


@dataclass
class EpisodeOutcome:
    """An episode's metrics and the arrays the model side needs: obs (H, W, 3) uint8 + proprio (Dp,)."""

    metrics: EpisodeMetrics
    obs0: Obs
    #: the observation at the last completed model step (each ``frameskip`` env steps)
    model_step_obs: Obs
    #: executed env-unit actions (T_env, d)
    actions: np.ndarray
    #: recorded frames (T_env + 1, H, W, 3) for a video, else None
    frames: np.ndarray | None
    goal_visual: np.ndarray | None
    #: decoded imagined frames (T_env / frameskip + 1, H, W, 3), added by the model side
    imagined: np.ndarray | None = None
    #: top-down frames (T_env + 1, h, w, 3) of a recorded episode in a partially observed env (four_rooms:
    #: ``render_full``), a video panel only, never seen by the model; None elsewhere
    maps: np.ndarray | None = None

"""A planning problem: what every optimizer (CEM, GD, ...) is handed, checked once.

:class:`PlanProblem` holds the world model's rollout, the encoded context and goal latents, the executed actions
of the earlier context frames, the objective and the action bounds, and scores candidate plans with
:meth:`PlanProblem.loss`. The optimizers only decide which action sequences to score; the checks, the chunked
batched scoring and the objective live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from dinowm_core.config import ObjectiveConfig
from dinowm_core.planning.common import ActionBounds, Obs
from dinowm_core.planning.objectives import objective

#: (z_obs0 (B, n, ...), act (B, N, A)[, memory]) -> (z_obs (B, N+1, ...), z): a planning rollout
RolloutFn = Callable[..., tuple[Obs, torch.Tensor]]


def model_action_dim(wm: Any) -> int | None:
    """Width of the model's action input (f*d), or None if the model does not say."""
    return getattr(getattr(wm, "action_encoder", None), "in_dim", None)


def _gather(z: Obs, index: torch.Tensor) -> Obs:
    """Pick rows of a latent dict by episode index (broadcast a batch of 1)."""
    if z["visual"].shape[0] == 1:
        return {k: v.expand(len(index), *v.shape[1:]) for k, v in z.items()}
    return {k: v.index_select(0, index) for k, v in z.items()}


def _memory_rows(memory: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The memory for candidate rows ``index`` (episode per row). When the rows are whole consecutive groups of
    equal size (CEM: N samples per episode, in episode order), one row per episode and the predictor reads it
    for each of its group without a copy; otherwise each row's episode memory is gathered."""
    counts = torch.bincount(index)
    groups = torch.unique_consecutive(index)
    n = int(counts[groups[0]]) if len(groups) else 0
    whole = len(groups) * n == len(index) and bool((counts[groups] == n).all())
    if whole and bool((index.view(len(groups), n) == groups[:, None]).all()):
        return {k: v.index_select(0, groups) for k, v in memory.items()}
    return {k: v.index_select(0, index) for k, v in memory.items()}


@dataclass
class PlanProblem:
    """Plan ``horizon`` steps for B episodes from ``z_obs`` (B, n, ...) towards ``z_goal`` (B|1, 1, ...).

    ``context_actions`` (B, n-1, A) are the executed actions between the n context frames; ``rollout`` is the
    world model's planning rollout (:class:`~dinowm_core.planning.rollout.Rollout`); ``chunk_size`` caps the
    rows per rollout call so B episodes x N samples fit in a few GB.
    """

    wm: Any
    rollout: RolloutFn
    z_obs: Obs
    z_goal: Obs
    horizon: int
    objective: ObjectiveConfig
    context_actions: torch.Tensor | None = None
    bounds: ActionBounds | None = None
    chunk_size: int | None = None
    action_dim: int | None = None
    #: a memory predictor's memory of each episode (rows = episodes), read by every candidate, never written
    memory: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        """Validate with messages a caller can act on; fills in ``action_dim``."""
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        b = self.z_obs["visual"].shape[0]
        if self.z_goal["visual"].shape[0] not in (1, b):
            raise ValueError(
                f"goal batch {self.z_goal['visual'].shape[0]} does not match observation batch {b}"
            )
        a_dim = model_action_dim(self.wm) or self.action_dim
        for name, other in (
            ("bounds", self.bounds.dim if self.bounds is not None else None),
            ("action_dim", self.action_dim),
        ):
            if other is not None and a_dim is not None and other != a_dim:
                raise ValueError(f"{name} has action dim {other} but the world model expects {a_dim}")
            a_dim = a_dim or other
        if a_dim is None:
            raise ValueError(
                "cannot infer the action dim: pass action_dim or use a model with an action_encoder"
            )
        self.action_dim = int(a_dim)
        ctx = self.context_actions
        if ctx is not None and (ctx.ndim != 3 or ctx.shape[0] != b or ctx.shape[-1] != self.action_dim):
            raise ValueError(
                f"context_actions must be (B={b}, n-1, A={self.action_dim}), got {tuple(ctx.shape)}"
            )
        n_ctx = self.z_obs["visual"].shape[1]
        n_past = 0 if self.context_actions is None else self.context_actions.shape[1]
        if n_past != n_ctx - 1:
            raise ValueError(
                f"z_obs has {n_ctx} context frames: pass context_actions with {n_ctx - 1} past actions, got {n_past}"
            )

    @property
    def batch_size(self) -> int:
        return self.z_obs["visual"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.z_obs["visual"].device

    def check_init(self, init: torch.Tensor | None) -> None:
        """A warm start must be (B, <=H, A)."""
        if init is None:
            return
        if init.shape[-1] != self.action_dim:
            raise ValueError(
                f"init has action dim {init.shape[-1]} but the world model expects {self.action_dim}"
            )
        if init.ndim != 3 or init.shape[0] != self.batch_size:
            raise ValueError(f"init must be (B={self.batch_size}, <=H, A), got {tuple(init.shape)}")
        if init.shape[1] > self.horizon:
            raise ValueError(f"init has {init.shape[1]} steps, more than the horizon {self.horizon}")

    def detached(self) -> PlanProblem:
        """The same problem with latents cut from any graph (gradient-based optimizers differentiate actions)."""
        return replace(
            self,
            z_obs={k: v.detach() for k, v in self.z_obs.items()},
            z_goal={k: v.detach() for k, v in self.z_goal.items()},
        )

    def loss(self, actions: torch.Tensor, episode: torch.Tensor | None = None) -> torch.Tensor:
        """Objective of M candidate plans: actions (M, H, A), episode (M,) row -> episode index (default: row
        b is episode b) -> loss (M,). Rollouts run in chunks of ``chunk_size`` rows."""
        m = actions.shape[0]
        if episode is None:
            episode = torch.arange(m, device=actions.device)
        chunk = m if self.chunk_size is None else max(1, int(self.chunk_size))
        objective_kw = self.objective.model_dump()
        losses = []
        for start in range(0, m, chunk):
            idx = episode[start : start + chunk]
            act = actions[start : start + chunk]
            if self.context_actions is not None:
                act = torch.cat([self.context_actions.index_select(0, idx).to(act), act], dim=1)
            if self.memory:
                z_pred, _ = self.rollout(_gather(self.z_obs, idx), act, _memory_rows(self.memory, idx))
            else:
                z_pred, _ = self.rollout(_gather(self.z_obs, idx), act)
            if self.context_actions is not None:  # score from the current frame on (H + 1 frames)
                n_past = self.context_actions.shape[1]
                z_pred = {k: v[:, n_past:] for k, v in z_pred.items()}
            losses.append(objective(z_pred, _gather(self.z_goal, idx), **objective_kw))
        return torch.cat(losses)

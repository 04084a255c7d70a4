"""Shared pieces of the planners: results, action bounds, input checks, RNG and the chunked plan evaluation.

Actions live in the model's space everywhere (reference section 5.4): normalized and frameskip-concatenated,
``A = frameskip * d``. Latents are encoded once by the caller (``wm.encode_obs``) and passed in.

RNG design: a planner takes ``generator=None`` (torch's global stream), one ``torch.Generator`` (all episodes
draw from it, episode-major within each call), or a sequence of one generator per episode. With one generator
per episode, episode ``b`` of a batched plan draws exactly the numbers a single-episode plan with generator
``b`` draws, so batching over episodes does not change any plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dinowm_core.planning.objectives import objective
from dinowm_core.planning.rollout import fast_rollout

Obs = dict[str, torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class PlanResult:
    """actions (B, H, A) normalized, frameskip-concatenated; loss (B,) objective of the returned plan."""

    actions: torch.Tensor
    loss: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionBounds:
    """Box bounds (A,) in normalized, frameskip-concatenated action space (the reference has none: bug 12)."""

    low: torch.Tensor
    high: torch.Tensor

    def __post_init__(self) -> None:
        self.low = torch.as_tensor(self.low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(self.high, dtype=torch.float32).reshape(-1)
        if self.low.shape != self.high.shape:
            raise ValueError(
                f"action bounds: low {tuple(self.low.shape)} and high {tuple(self.high.shape)} differ"
            )
        if bool((self.low > self.high).any()):
            raise ValueError("action bounds: low must be <= high everywhere")

    @property
    def dim(self) -> int:
        return self.low.numel()

    def clamp(self, a: torch.Tensor) -> torch.Tensor:
        """a (..., A) -> a clipped into [low, high]"""
        return torch.maximum(torch.minimum(a, self.high.to(a)), self.low.to(a))

    @classmethod
    def from_env(cls, low: Any, high: Any, normalizer: Any, frameskip: int) -> ActionBounds:
        """Env action Box bounds (d,) in env units -> bounds of the (f*d,) normalized model action.

        ``normalizer`` is a :class:`dinowm_core.data.normalization.Normalizer` (any object with
        ``normalize_actions``); normalization is affine with positive scale, so it keeps low <= high.
        """
        lo = torch.as_tensor(normalizer.normalize_actions(torch.as_tensor(low, dtype=torch.float64)))
        hi = torch.as_tensor(normalizer.normalize_actions(torch.as_tensor(high, dtype=torch.float64)))
        return cls(lo.repeat(frameskip).float(), hi.repeat(frameskip).float())


def normalized_zero_action(normalizer: Any, action_dim: int, frameskip: int) -> torch.Tensor:
    """The env's zero (no-op) action in model space (f*d,): GD's ``sample_type="zero"`` and MPC padding."""
    zero = torch.zeros(action_dim, dtype=torch.float64)
    return torch.as_tensor(normalizer.normalize_actions(zero)).repeat(frameskip).float()


# ---- checks ---------------------------------------------------------------------------------------


def model_action_dim(wm: Any) -> int | None:
    """Width of the model's action input (f*d), or None if the model does not say."""
    return getattr(getattr(wm, "action_encoder", None), "in_dim", None)


def batch_size(z_obs0: Obs, z_goal: Obs) -> int:
    b = z_obs0["visual"].shape[0]
    if z_goal["visual"].shape[0] not in (1, b):
        raise ValueError(f"goal batch {z_goal['visual'].shape[0]} does not match observation batch {b}")
    return b


def check_plan_inputs(
    wm: Any,
    z_obs0: Obs,
    z_goal: Obs,
    *,
    horizon: int,
    action_dim: int | None = None,
    init: torch.Tensor | None = None,
    bounds: ActionBounds | None = None,
    context_actions: torch.Tensor | None = None,
) -> int:
    """Validate planner inputs with messages a caller can act on; returns the action dim A."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    a_dim = model_action_dim(wm) or action_dim
    for name, other in (
        ("bounds", bounds.dim if bounds is not None else None),
        ("init", init.shape[-1] if init is not None else None),
        ("action_dim", action_dim),
    ):
        if other is not None and a_dim is not None and other != a_dim:
            raise ValueError(f"{name} has action dim {other} but the world model expects {a_dim}")
        a_dim = a_dim or other
    if a_dim is None:
        raise ValueError("cannot infer the action dim: pass action_dim or use a model with an action_encoder")
    b = batch_size(z_obs0, z_goal)
    if init is not None and (init.ndim != 3 or init.shape[0] != b):
        raise ValueError(f"init must be (B={b}, <=H, A), got {tuple(init.shape)}")
    if init is not None and init.shape[1] > horizon:
        raise ValueError(f"init has {init.shape[1]} steps, more than the horizon {horizon}")
    n_ctx = z_obs0["visual"].shape[1]
    n_past = 0 if context_actions is None else context_actions.shape[1]
    if n_past != n_ctx - 1:
        raise ValueError(
            f"z_obs0 has {n_ctx} context frames: pass context_actions with {n_ctx - 1} past actions, got {n_past}"
        )
    return int(a_dim)


def pad_init(init: torch.Tensor | None, b: int, horizon: int, a_dim: int, fill: torch.Tensor) -> torch.Tensor:
    """Warm start (B, <=H, A) padded with ``fill`` (B, H, A) up to H steps (reference: zeros for CEM)."""
    if init is None:
        return fill.clone()
    fill = fill.clone()
    fill[:, : init.shape[1]] = init.to(fill)
    return fill


# ---- randomness -----------------------------------------------------------------------------------


def _generator_list(generator: Generators, b: int) -> list[torch.Generator | None] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != b:
        raise ValueError(f"got {len(gens)} generators for {b} episodes")
    return gens


def randn(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal (B, ...) drawn per episode when a generator list is given (see the module docstring)."""
    gens = _generator_list(generator, shape[0])
    if gens is None:
        return _randn_on(shape, generator, device)  # type: ignore[arg-type]
    return torch.stack([_randn_on(shape[1:], g, device) for g in gens])


def _randn_on(shape: tuple[int, ...], g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = g.device if g is not None else device
    return torch.randn(shape, generator=g, device=gen_device).to(device)


def multinomial(probs: torch.Tensor, num_samples: int, generator: Generators) -> torch.Tensor:
    """probs (B, H, K) -> indices (B, num_samples, H), drawn per episode when a generator list is given."""
    b, h, k = probs.shape
    gens = _generator_list(generator, b)

    def draw(p: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        p = p.to(g.device) if g is not None else p
        return torch.multinomial(p.reshape(-1, k), num_samples, replacement=True, generator=g)

    if gens is None:
        idx = draw(probs, generator)  # type: ignore[arg-type]
        return idx.reshape(b, h, num_samples).transpose(1, 2).to(probs.device)
    return torch.stack([draw(probs[i], g).T for i, g in enumerate(gens)]).to(probs.device)


# ---- evaluation -----------------------------------------------------------------------------------


def _gather(z: Obs, index: torch.Tensor) -> Obs:
    """Pick rows of a latent dict by episode index (broadcast a batch of 1)."""
    if z["visual"].shape[0] == 1:
        return {k: v.expand(len(index), *v.shape[1:]) for k, v in z.items()}
    return {k: v.index_select(0, index) for k, v in z.items()}


def evaluate_plans(
    wm: Any,
    z_obs0: Obs,
    z_goal: Obs,
    actions: torch.Tensor,
    episode: torch.Tensor,
    *,
    objective_kw: dict[str, Any] | None = None,
    context_actions: torch.Tensor | None = None,
    chunk_size: int | None = None,
    amp: bool = False,
    kv_cache: bool = True,
    align: bool | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Objective of M candidate plans: actions (M, H, A), episode (M,) row -> episode index -> loss (M,).

    Rollouts run in chunks of ``chunk_size`` rows so a plan over B episodes x N samples fits in a few GB.
    """
    m = actions.shape[0]
    chunk = m if chunk_size is None else max(1, int(chunk_size))
    losses = []
    for start in range(0, m, chunk):
        idx = episode[start : start + chunk]
        act = actions[start : start + chunk]
        if context_actions is not None:
            act = torch.cat([context_actions.index_select(0, idx).to(act), act], dim=1)
        z_pred, _ = fast_rollout(
            wm, _gather(z_obs0, idx), act, kv_cache=kv_cache, amp=amp, align=align, compile=compile
        )
        if context_actions is not None:  # score from the current frame on (H + 1 frames)
            n_past = context_actions.shape[1]
            z_pred = {k: v[:, n_past:] for k, v in z_pred.items()}
        losses.append(objective(z_pred, _gather(z_goal, idx), **(objective_kw or {})))
    return torch.cat(losses)


def n_chunks(m: int, chunk_size: int | None) -> int:
    return 1 if chunk_size is None else math.ceil(m / chunk_size)

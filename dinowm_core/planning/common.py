"""Shared pieces of the planners: results, action bounds, RNG streams and step timing.

Actions live in the model's space everywhere (reference section 5.4): normalized and frameskip-concatenated,
``A = frameskip * d``. Latents are encoded once by the caller (``wm.encode_obs``) and passed in.

RNG design: a planner takes ``generator=None`` (torch's global stream), one ``torch.Generator`` (all episodes
draw from it, episode-major within each call), or a sequence of one generator per episode. With one generator
per episode, episode ``b`` of a batched plan draws exactly the numbers a single-episode plan with generator
``b`` draws, so batching over episodes does not change any plan.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Obs = dict[str, torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class PlanResult:
    """actions (B, H, A) normalized, frameskip-concatenated; loss (B,) objective of the returned plan.

    ``execute`` (B, n, A) is what the caller runs now: the whole plan for an open-loop planner, the first
    ``n_taken_actions`` steps for MPC. A bare optimizer leaves it None (its caller decides).
    """

    actions: torch.Tensor
    loss: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    execute: torch.Tensor | None = None


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


def discrete_action_set(normalizer: Any) -> torch.Tensor | None:
    """A discrete env's per-env-step action rows in model space: the one-hots (K, K); None if continuous.

    ``cem_discrete`` concatenates ``frameskip`` of them into a model action."""
    k = getattr(normalizer, "num_actions", None)
    return None if k is None else torch.eye(int(k))


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


# ---- optimizer loops ------------------------------------------------------------------------------


def timed_steps(n: int, record: list[float]) -> Iterator[int]:
    """``for i in timed_steps(n, step_s)``: yields 0..n-1 and appends each loop body's seconds to ``record``."""
    for i in range(n):
        t0 = time.perf_counter()
        yield i
        record.append(time.perf_counter() - t0)


def pad_init(init: torch.Tensor | None, b: int, horizon: int, a_dim: int, fill: torch.Tensor) -> torch.Tensor:
    """Warm start (B, <=H, A) padded with ``fill`` (B, H, A) up to H steps (reference: zeros for CEM)."""
    if init is None:
        return fill.clone()
    fill = fill.clone()
    fill[:, : init.shape[1]] = init.to(fill)
    return fill

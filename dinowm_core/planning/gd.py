"""Gradient descent on the action sequence through the frozen world model (reference section 5.5).

Reference update (no momentum): ``a <- a - lr * grad(sum over episodes of the objective) + N(0, noise^2)``.
``optimizer="adam"`` swaps the plain step for Adam (our addition); the exploration noise is added either way.
Deliberate deviations: optional action bounds (clamp after every step), no simulator-driven early stop, and
the returned loss is the objective of the returned actions.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch

from dinowm_core.planning.common import (
    ActionBounds,
    Generators,
    Obs,
    PlanResult,
    batch_size,
    check_plan_inputs,
    evaluate_plans,
    pad_init,
    randn,
)


def _initial_actions(
    sample_type: str, shape: tuple[int, int, int], generator: Generators, device, zero_action
) -> torch.Tensor:
    if sample_type == "randn":
        return randn(shape, generator, device)
    if sample_type == "zero":
        zero = torch.zeros(shape[-1]) if zero_action is None else torch.as_tensor(zero_action)
        return zero.to(device, torch.float32).expand(shape).clone()
    raise ValueError(f"sample_type must be 'randn' or 'zero', got {sample_type!r}")


def gd_plan(
    wm: Any,
    z_obs0: Obs,
    z_goal: Obs,
    *,
    horizon: int,
    opt_steps: int = 1000,
    lr: float = 1.0,
    action_noise: float = 0.003,
    sample_type: Literal["randn", "zero"] = "randn",
    optimizer: Literal["sgd", "adam"] = "sgd",
    objective_kw: dict[str, Any] | None = None,
    bounds: ActionBounds | None = None,
    init: torch.Tensor | None = None,
    generator: Generators = None,
    zero_action: torch.Tensor | None = None,
    amp: bool = False,
    kv_cache: bool = True,
    context_actions: torch.Tensor | None = None,
    action_dim: int | None = None,
    compile: bool = False,
) -> PlanResult:
    """Plan (B, H, A) actions by gradient descent from ``init`` (padded with the ``sample_type`` init).

    ``zero_action`` (A,) is the env's no-op in model space for ``sample_type="zero"`` (default: all zeros,
    i.e. the dataset's mean action).
    """
    if opt_steps < 1 or lr <= 0 or action_noise < 0:
        raise ValueError(
            f"need opt_steps >= 1, lr > 0, action_noise >= 0; got {opt_steps}, {lr}, {action_noise}"
        )
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    a_dim = check_plan_inputs(
        wm,
        z_obs0,
        z_goal,
        horizon=horizon,
        action_dim=action_dim,
        init=init,
        bounds=bounds,
        context_actions=context_actions,
    )
    b, device = batch_size(z_obs0, z_goal), z_obs0["visual"].device
    shape = (b, horizon, a_dim)
    start = pad_init(
        init, b, horizon, a_dim, _initial_actions(sample_type, shape, generator, device, zero_action)
    )
    actions = (bounds.clamp(start) if bounds is not None else start).requires_grad_(True)
    opt = torch.optim.Adam([actions], lr=lr) if optimizer == "adam" else None
    z_obs0 = {k: v.detach() for k, v in z_obs0.items()}
    z_goal = {k: v.detach() for k, v in z_goal.items()}
    episode = torch.arange(b, device=device)
    run = dict(
        objective_kw=objective_kw,
        context_actions=context_actions,
        amp=amp,
        kv_cache=kv_cache,
        compile=compile,
    )
    losses, step_s = [], []
    for _ in range(opt_steps):
        t0 = time.perf_counter()
        loss = evaluate_plans(wm, z_obs0, z_goal, actions, episode, **run)
        # Sum over episodes (reference: mean * n_evals): each episode's gradient is its own.
        (grad,) = torch.autograd.grad(loss.sum(), actions)
        with torch.no_grad():
            if opt is None:
                actions -= lr * grad
            else:
                actions.grad = grad
                opt.step()
            if action_noise > 0:
                actions += action_noise * randn(shape, generator, device)
            if bounds is not None:
                actions.copy_(bounds.clamp(actions))
        losses.append(loss.detach())
        step_s.append(time.perf_counter() - t0)
    actions = actions.detach()
    with torch.no_grad():
        final = evaluate_plans(wm, z_obs0, z_goal, actions, episode, **run)
    info = {"loss": torch.stack(losses), "step_s": step_s, "n_rollouts": (opt_steps + 1) * b}
    return PlanResult(actions=actions, loss=final, info=info)

"""Gradient descent on the action sequence through the frozen world model (reference section 5.5).

Reference update (no momentum): ``a <- a - lr * grad(sum over episodes of the objective) + N(0, noise^2)``.
``optimizer="adam"`` swaps the plain step for Adam (our addition); the exploration noise is added either way.
Deliberate deviations: optional action bounds (clamp after every step), no simulator-driven early stop, and
the returned loss is the objective of the returned actions.
"""

from __future__ import annotations

import torch

from dinowm_core.config import GDConfig
from dinowm_core.planning.common import Generators, PlanResult, pad_init, randn, timed_steps
from dinowm_core.planning.problem import PlanProblem


def _initial_actions(
    sample_type: str, shape: tuple[int, int, int], generator: Generators, device, zero_action
) -> torch.Tensor:
    if sample_type == "randn":
        return randn(shape, generator, device)
    if sample_type == "zero":
        zero = torch.zeros(shape[-1]) if zero_action is None else torch.as_tensor(zero_action)
        return zero.to(device, torch.float32).expand(shape).clone()
    raise ValueError(f"sample_type must be 'randn' or 'zero', got {sample_type!r}")


def gd(
    problem: PlanProblem,
    cfg: GDConfig,
    *,
    init: torch.Tensor | None = None,
    generator: Generators = None,
    zero_action: torch.Tensor | None = None,
) -> PlanResult:
    """Plan (B, H, A) actions by gradient descent from ``init`` (padded with the ``cfg.sample_type`` init).

    ``zero_action`` (A,) is the env's no-op in model space for ``sample_type="zero"`` (default: all zeros,
    i.e. the dataset's mean action).
    """
    problem.check_init(init)
    b, device = problem.batch_size, problem.device
    shape = (b, problem.horizon, problem.action_dim)
    start = pad_init(init, *shape, _initial_actions(cfg.sample_type, shape, generator, device, zero_action))
    bounds = problem.bounds
    actions = (bounds.clamp(start) if bounds is not None else start).requires_grad_(True)
    opt = torch.optim.Adam([actions], lr=cfg.lr) if cfg.optimizer == "adam" else None
    problem = problem.detached()
    losses, step_s = [], []
    for _ in timed_steps(cfg.opt_steps, step_s):
        loss = problem.loss(actions)
        # Sum over episodes (reference: mean * n_evals): each episode's gradient is its own.
        (grad,) = torch.autograd.grad(loss.sum(), actions)
        with torch.no_grad():
            if opt is None:
                actions -= cfg.lr * grad
            else:
                actions.grad = grad
                opt.step()
            if cfg.action_noise > 0:
                actions += cfg.action_noise * randn(shape, generator, device)
            if bounds is not None:
                actions.copy_(bounds.clamp(actions))
        losses.append(loss.detach())
    actions = actions.detach()
    with torch.no_grad():
        final = problem.loss(actions)
    info = {"loss": torch.stack(losses), "step_s": step_s, "n_rollouts": (cfg.opt_steps + 1) * b}
    return PlanResult(actions=actions, loss=final, info=info)

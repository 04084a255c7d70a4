"""MPPI: model-predictive path integral control (Williams et al. 2017), batched like :func:`cem`.

Per iteration, for every episode at once: draw N sequences around the mean (white or coloured noise,
:mod:`dinowm_core.planning.noise`; sample 0 is the mean itself), score all B*N in one (optionally chunked)
rollout, weight them by ``softmax(-(loss - min loss) / temperature)`` within each episode and move the mean to
the weighted average. Subtracting the minimum changes nothing mathematically and keeps the exponentials finite.
The std stays at ``var_scale`` or, with ``adapt_std``, becomes the weighted std of the samples (clamped to
``[min_std, var_scale]``), as TD-MPC2's planner does. The warm start (the previous plan's untaken tail) sets the
initial mean, like CEM's.

``temperature`` is in units of the objective: small -> the best sample wins (random search), large -> the plain
average of the samples (no progress). The returned loss is the objective of the returned mean (one extra
rollout of B sequences).
"""

from __future__ import annotations

import torch

from dinowm_core.config import MPPIConfig
from dinowm_core.planning.common import Generators, PlanResult, pad_init, timed_steps
from dinowm_core.planning.noise import colored_noise
from dinowm_core.planning.problem import PlanProblem


def mppi_weights(loss: torch.Tensor, temperature: float) -> torch.Tensor:
    """loss (B, N) -> weights (B, N), each row summing to 1: ``softmax(-(loss - min) / temperature)``."""
    return torch.softmax(-(loss - loss.min(dim=1, keepdim=True).values) / temperature, dim=1)


@torch.no_grad()
def mppi(
    problem: PlanProblem, cfg: MPPIConfig, *, init: torch.Tensor | None = None, generator: Generators = None
) -> PlanResult:
    """Plan (B, H, A) actions for ``problem``; ``init`` (B, <=H, A) warm-starts the mean (zero padded);
    ``generator``: one per episode for batch-invariant plans."""
    problem.check_init(init)
    b, h, a_dim, device = problem.batch_size, problem.horizon, problem.action_dim, problem.device
    n, bounds = cfg.num_samples, problem.bounds
    mean = pad_init(init, b, h, a_dim, torch.zeros(b, h, a_dim, device=device))
    std = torch.full_like(mean, cfg.var_scale)
    episode = torch.arange(b, device=device).repeat_interleave(n)  # row -> episode
    best, step_s = [], []
    for _ in timed_steps(cfg.opt_steps, step_s):
        # ---- perturb the mean; sample 0 is the mean ----
        samples = mean[:, None] + std[:, None] * colored_noise((b, n, h, a_dim), cfg.beta, generator, device)
        samples[:, 0] = mean
        if bounds is not None:
            samples = bounds.clamp(samples)
        # ---- score all B*N sequences in one batched rollout ----
        loss = problem.loss(samples.flatten(0, 1), episode).view(b, n)
        # ---- exponentially weighted average (per episode) ----
        w = mppi_weights(loss, cfg.temperature)[:, :, None, None]  # (B, N, 1, 1)
        mean = (w * samples).sum(dim=1)
        if cfg.adapt_std:
            var = (w * (samples - mean[:, None]) ** 2).sum(dim=1)
            std = var.sqrt().clamp(cfg.min_std, cfg.var_scale)
        best.append(loss.min(dim=1).values)
    final = problem.loss(mean)
    info = {
        "best_loss": torch.stack(best),  # (opt_steps, B): lowest sampled loss per iteration
        "final_std": std,
        "step_s": step_s,
        "n_rollouts": cfg.opt_steps * b * n + b,
    }
    return PlanResult(actions=mean, loss=final, info=info)

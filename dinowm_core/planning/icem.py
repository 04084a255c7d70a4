"""iCEM: the sample-efficient cross-entropy method (Pinneri et al. 2020, Algorithm 1), batched like :func:`cem`.

What it adds to CEM, each a config field of :class:`~dinowm_core.config.ICEMConfig`:

* coloured noise (``beta``): samples are time-correlated along the horizon, power spectrum 1/f^beta
  (:mod:`dinowm_core.planning.noise`); beta = 0 is CEM's white noise;
* a population that shrinks by ``population_decay`` every iteration, ``N_i = max(N / gamma^i, 2K)``;
* memory within a plan: a fraction ``keep_elites`` of each iteration's elites joins the next iteration's
  population. The world model is deterministic, so their objective is reused, not recomputed;
* memory across MPC calls: the previous plan's elites, shifted by the executed steps (``init_elites``, zero padded
  like the warm-start mean), replace that many fresh samples in the first iteration (re-scored: the start moved);
* momentum: ``mean <- momentum * mean + (1 - momentum) * elite_mean`` (and the same for the std);
* the mean is added to the population in the last iteration only, and the plan returned is the best sequence
  ever sampled (``execute="best"``, the paper) or the final mean (``execute="mean"``, as :func:`cem`).

Batched over B episodes and the population: one ``problem.loss`` call per iteration over all new rows (chunked by
the problem). With one generator per episode a batched plan equals the single-episode plans, and the same seeds
give the same plan.
"""

from __future__ import annotations

import logging

import torch

from dinowm_core.config import ICEMConfig
from dinowm_core.planning.common import Generators, PlanResult, pad_init, timed_steps
from dinowm_core.planning.noise import colored_noise
from dinowm_core.planning.problem import PlanProblem

log = logging.getLogger(__name__)


def population_sizes(cfg: ICEMConfig) -> list[int]:
    """New samples scored per iteration: ``max(N * gamma^-i, 2K)`` for i = 0..opt_steps-1 (paper eq. 3)."""
    return [max(int(cfg.num_samples * cfg.population_decay**-i), 2 * cfg.topk) for i in range(cfg.opt_steps)]


def num_kept(cfg: ICEMConfig) -> int:
    """Elites carried into the next iteration (and, shifted, into the next MPC call): ``round(keep * K)``."""
    return int(round(cfg.keep_elites * cfg.topk))


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, M, H, A), idx (B, K) -> (B, K, H, A)"""
    return x.gather(1, idx[:, :, None, None].expand(-1, -1, *x.shape[2:]))


@torch.no_grad()
def icem(
    problem: PlanProblem,
    cfg: ICEMConfig,
    *,
    init: torch.Tensor | None = None,
    init_elites: torch.Tensor | None = None,
    generator: Generators = None,
) -> PlanResult:
    """Plan (B, H, A) actions for ``problem``.

    ``init`` (B, <=H, A) warm-starts the mean; ``init_elites`` (B, k, <=H, A) are the previous plan's shifted elites
    (at most ``num_kept(cfg)`` of them are used); ``generator``: one per episode for batch-invariant plans.
    ``info["elites"]`` (B, K, H, A) are the last iteration's elites, best first (the next call's ``init_elites``).
    """
    if cfg.topk < 2:
        raise ValueError("planner.icem.topk must be >= 2 (the std of the elites is unbiased)")
    problem.check_init(init)
    b, h, a_dim, device = problem.batch_size, problem.horizon, problem.action_dim, problem.device
    k, bounds = cfg.topk, problem.bounds
    mean = pad_init(init, b, h, a_dim, torch.zeros(b, h, a_dim, device=device))
    std = torch.full_like(mean, cfg.var_scale)
    shifted = _shifted_elites(problem, init_elites, num_kept(cfg))
    kept, kept_loss = None, None
    best_seq, best_loss = mean.clone(), torch.full((b,), float("inf"), device=device)
    sizes, best, step_s, n_rollouts = population_sizes(cfg), [], [], 0
    for i in timed_steps(cfg.opt_steps, step_s):
        n = sizes[i]
        # ---- sample coloured sequences around the mean ----
        samples = mean[:, None] + std[:, None] * colored_noise((b, n, h, a_dim), cfg.beta, generator, device)
        if i == 0 and shifted is not None:
            samples[:, : shifted.shape[1]] = (
                shifted  # last plan's elites, shifted (paper: shift-initialization)
            )
        if i == cfg.opt_steps - 1:
            samples[:, -1] = mean  # the paper adds the mean in the last iteration
        if bounds is not None:
            samples = bounds.clamp(samples)
        # ---- score the new rows in one batched rollout; kept elites keep their scores ----
        episode = torch.arange(b, device=device).repeat_interleave(n)
        loss = problem.loss(samples.flatten(0, 1), episode).view(b, n)
        n_rollouts += b * n
        if kept is not None:
            samples, loss = torch.cat([kept, samples], dim=1), torch.cat([kept_loss, loss], dim=1)
        top_loss, top_idx = loss.topk(k, dim=1, largest=False, sorted=True)
        elites = _gather_rows(samples, top_idx)
        better = top_loss[:, 0] < best_loss
        best_seq[better], best_loss[better] = elites[better, 0], top_loss[better, 0]
        # ---- refit with momentum (paper: alpha-smoothing of mean and std) ----
        mean = cfg.momentum * mean + (1 - cfg.momentum) * elites.mean(dim=1)
        std = cfg.momentum * std + (1 - cfg.momentum) * elites.std(dim=1)
        n_keep = num_kept(cfg)
        kept, kept_loss = (elites[:, :n_keep], top_loss[:, :n_keep]) if n_keep else (None, None)
        best.append(best_loss.clone())
    if cfg.execute == "best":
        actions, final = best_seq, best_loss.clone()
    else:
        actions, final = mean, problem.loss(mean)
        n_rollouts += b
    log.debug("icem: best loss %s after %d steps", best_loss.tolist(), cfg.opt_steps)
    info = {
        "best_loss": torch.stack(best),  # (opt_steps, B): lowest loss seen so far, per iteration
        "final_std": std,
        "elites": elites,
        "mean": mean,  # the distribution's mean: MPC shifts it into the next call's warm start
        "population": sizes,
        "step_s": step_s,
        "n_rollouts": n_rollouts,
    }
    return PlanResult(actions=actions, loss=final, info=info)


def _shifted_elites(
    problem: PlanProblem, init_elites: torch.Tensor | None, n_keep: int
) -> torch.Tensor | None:
    """The first ``n_keep`` of the previous plan's elites (B, k, <=H, A), zero padded to H -> (B, k', H, A)."""
    if init_elites is None or n_keep == 0 or init_elites.shape[1] == 0:
        return None
    b, h, a_dim = problem.batch_size, problem.horizon, problem.action_dim
    if init_elites.ndim != 4 or init_elites.shape[0] != b or init_elites.shape[-1] != a_dim:
        raise ValueError(f"init_elites must be (B={b}, k, <=H, A={a_dim}), got {tuple(init_elites.shape)}")
    if init_elites.shape[2] > h:
        raise ValueError(f"init_elites have {init_elites.shape[2]} steps, more than the horizon {h}")
    elites = init_elites[:, :n_keep].to(problem.device, torch.float32)
    out = torch.zeros(b, elites.shape[1], h, a_dim, device=problem.device)
    out[:, :, : elites.shape[2]] = elites
    return out

"""Cross-entropy method over action sequences (reference section 5.4), batched over episodes and samples.

Per iteration, for every episode at once: draw N Gaussian sequences around the episode's mean (sample 0 is the
mean itself, as the reference), roll all B*N of them through the world model in one (optionally chunked) call,
keep the top-K per episode and refit mean and unbiased std. The reference loops over episodes in Python and
re-encodes the observation for all 300 samples every iteration (bug 12); here the caller's latents are reused.

Deliberate deviations: optional action bounds (clamp; the reference has none), no simulator-driven early
stop (the reference stops once every episode succeeds in the env, an oracle), and the returned loss is the
objective of the returned mean (one extra rollout of B sequences).

``cem_discrete`` is the categorical variant for envs with a discrete action set (four_rooms), factorised over
the frameskip sub-steps of each model step.
"""

from __future__ import annotations

import logging

import torch

from dinowm_core.config import CEMConfig
from dinowm_core.planning.common import Generators, PlanResult, multinomial, pad_init, randn, timed_steps
from dinowm_core.planning.problem import PlanProblem

log = logging.getLogger(__name__)


def _check_counts(num_samples: int, topk: int, opt_steps: int) -> None:
    if num_samples < 1 or opt_steps < 1:
        raise ValueError(f"num_samples and opt_steps must be >= 1, got {num_samples} and {opt_steps}")
    if not 1 <= topk <= num_samples:
        raise ValueError(f"topk must be in [1, num_samples={num_samples}], got {topk}")
    if topk < 2:
        # The unbiased std of a single elite is undefined (NaN) and would poison the next iteration.
        raise ValueError("topk must be >= 2 (the std of the elites is unbiased)")


@torch.no_grad()
def cem(
    problem: PlanProblem, cfg: CEMConfig, *, init: torch.Tensor | None = None, generator: Generators = None
) -> PlanResult:
    """Plan (B, H, A) actions for ``problem``.

    ``init`` (B, <=H, A) warm-starts the mean (zero padded); ``generator`` is one generator or one per episode
    (then a batched plan equals the single-episode plans).
    """
    _check_counts(cfg.num_samples, cfg.topk, cfg.opt_steps)
    problem.check_init(init)
    b, h, a_dim, device = problem.batch_size, problem.horizon, problem.action_dim, problem.device
    n, bounds = cfg.num_samples, problem.bounds
    mean = pad_init(init, b, h, a_dim, torch.zeros(b, h, a_dim, device=device))
    std = torch.full_like(mean, cfg.var_scale)
    episode = torch.arange(b, device=device).repeat_interleave(n)  # row -> episode
    best, step_s = [], []
    for _ in timed_steps(cfg.opt_steps, step_s):
        # ---- sample around the mean; sample 0 is the mean (reference) ----
        noise = randn((b, n, h, a_dim), generator, device)
        samples = mean[:, None] + std[:, None] * noise
        samples[:, 0] = mean
        if bounds is not None:
            samples = bounds.clamp(samples)
        # ---- score all B*N sequences in one batched rollout ----
        loss = problem.loss(samples.flatten(0, 1), episode).view(b, n)
        # ---- refit to the top-k of each episode ----
        top_loss, top_idx = loss.topk(cfg.topk, dim=1, largest=False, sorted=True)
        elites = samples.gather(1, top_idx[:, :, None, None].expand(-1, -1, h, a_dim))
        mean, std = elites.mean(dim=1), elites.std(dim=1)
        best.append(top_loss[:, 0])
    final = problem.loss(mean)
    log.debug("cem: best loss %s after %d steps", best[-1].tolist(), cfg.opt_steps)
    info = {
        "best_loss": torch.stack(best),  # (opt_steps, B): lowest sampled loss per iteration
        "final_std": std,
        "step_s": step_s,
        "n_rollouts": cfg.opt_steps * b * n + b,
    }
    return PlanResult(actions=mean, loss=final, info=info)


@torch.no_grad()
def cem_discrete(
    problem: PlanProblem,
    cfg: CEMConfig,
    action_set: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    smoothing: float = 0.1,
    generator: Generators = None,
) -> PlanResult:
    """CEM over a fixed action set: categoricals refit to elite frequencies (B, H, A) actions for ``problem``.

    ``action_set`` (K, d) holds the rows one env step can take, in model space (a discrete env's one-hots,
    :func:`~dinowm_core.planning.common.discrete_action_set`). A model step's action is ``f = A / d`` rows
    concatenated (frameskip), so there are K^f model actions per step; rather than enumerate them, the
    distribution factorises into one categorical per env sub-step, ``(B, H * f, K)``. With ``d = A`` (f = 1)
    this is the plain per-step categorical over K model actions.

    ``cfg`` gives the samples, elites and iterations (``var_scale`` is unused). The new distribution is
    ``(1 - smoothing) * elite_frequency + smoothing * old`` (keeps every action reachable); sample 0 is the
    current mode. ``init`` (B, <=H, A) warm-starts it (MPC): each sub-step's nearest row of the action set (largest
    dot product) gets probability 1/2, the others share the rest. Returns the mode's actions,
    ``info["indices"]`` (B, H * f) and ``info["probs"]`` (B, H * f, K).
    """
    n, topk = cfg.num_samples, cfg.topk
    if not 1 <= topk <= n:
        raise ValueError(f"need 1 <= topk <= num_samples, got {topk}, {n}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if action_set.ndim != 2 or action_set.shape[0] < 1:
        raise ValueError(f"action_set must be (K, d), got {tuple(action_set.shape)}")
    d = action_set.shape[1]
    if problem.action_dim % d:
        raise ValueError(
            f"action_set rows have width {d}, which does not divide the world model's action dim "
            f"{problem.action_dim} (frameskip x per-step width)"
        )
    problem.check_init(init)
    b, h, device = problem.batch_size, problem.horizon, problem.device
    f, a_dim = problem.action_dim // d, problem.action_dim
    action_set = action_set.to(device, torch.float32)
    k = action_set.shape[0]
    probs = torch.full((b, h * f, k), 1.0 / k, device=device)
    if init is not None:
        steps = init.shape[1] * f
        nearest = (init.to(device, torch.float32).reshape(b, steps, d) @ action_set.T).argmax(-1)
        probs[:, :steps] = 0.5 / k + 0.5 * torch.nn.functional.one_hot(nearest, k)
    episode = torch.arange(b, device=device).repeat_interleave(n)
    best, step_s = [], []
    for _ in timed_steps(cfg.opt_steps, step_s):
        # ---- sample per env sub-step; sample 0 is the mode ----
        idx = multinomial(probs, n, generator)  # (B, N, H * f)
        idx[:, 0] = probs.argmax(-1)
        # ---- score all B*N sequences in one batched rollout ----
        actions = action_set[idx].reshape(b * n, h, a_dim)  # (B*N, H, f*d): f rows per model step
        loss = problem.loss(actions, episode)
        # ---- refit each categorical to the elites' frequencies ----
        top_loss, top = loss.view(b, n).topk(topk, dim=1, largest=False)
        elite_idx = idx.gather(1, top[:, :, None].expand(-1, -1, h * f))  # (B, K_elite, H * f)
        freq = torch.nn.functional.one_hot(elite_idx, k).float().mean(dim=1)  # (B, H * f, K)
        probs = (1 - smoothing) * freq + smoothing * probs
        best.append(top_loss[:, 0])
    mode = probs.argmax(-1)
    actions = action_set[mode].reshape(b, h, a_dim)
    final = problem.loss(actions)
    info = {
        "indices": mode,
        "probs": probs,
        "best_loss": torch.stack(best),
        "step_s": step_s,
        "n_rollouts": cfg.opt_steps * b * n + b,
    }
    return PlanResult(actions=actions, loss=final, info=info)

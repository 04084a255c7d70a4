"""Cross-entropy method over action sequences (reference section 5.4), batched over episodes and samples.

Per iteration, for every episode at once: draw N Gaussian sequences around the episode's mean (sample 0 is the
mean itself, as the reference), roll all B*N of them through the world model in one (optionally chunked) call,
keep the top-K per episode and refit mean and unbiased std. The reference loops over episodes in Python and
re-encodes the observation for all 300 samples every iteration (bug 12); here the caller's latents are reused.

Deliberate deviations: optional action bounds (clamp; the reference has none), no simulator-driven early
stop (the reference stops once every episode succeeds in the env, an oracle), and the returned loss is the
objective of the returned mean (one extra rollout of B sequences).

``cem_plan_discrete`` is the categorical variant for envs with a fixed discrete action set.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from dinowm_core.planning.common import (
    ActionBounds,
    Generators,
    Obs,
    PlanResult,
    batch_size,
    check_plan_inputs,
    evaluate_plans,
    multinomial,
    pad_init,
    randn,
)

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
def cem_plan(
    wm: Any,
    z_obs0: Obs,
    z_goal: Obs,
    *,
    horizon: int,
    num_samples: int = 300,
    topk: int = 30,
    opt_steps: int = 30,
    var_scale: float = 1.0,
    objective_kw: dict[str, Any] | None = None,
    bounds: ActionBounds | None = None,
    init: torch.Tensor | None = None,
    generator: Generators = None,
    chunk_size: int | None = None,
    amp: bool = False,
    kv_cache: bool = True,
    context_actions: torch.Tensor | None = None,
    action_dim: int | None = None,
    align: bool | None = None,
    compile: bool = False,
) -> PlanResult:
    """Plan (B, H, A) actions from context latents ``z_obs0`` (B, n, ...) towards ``z_goal`` (B|1, 1, ...).

    ``init`` (B, <=H, A) warm-starts the mean (zero padded); ``generator`` is one generator or one per episode
    (then a batched plan equals the single-episode plans); ``context_actions`` (B, n-1, A) are the executed
    actions of the earlier context frames when n > 1.
    """
    _check_counts(num_samples, topk, opt_steps)
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
    mean = pad_init(init, b, horizon, a_dim, torch.zeros(b, horizon, a_dim, device=device))
    std = torch.full_like(mean, var_scale)
    episode = torch.arange(b, device=device).repeat_interleave(num_samples)  # row -> episode
    run = dict(
        objective_kw=objective_kw,
        context_actions=context_actions,
        chunk_size=chunk_size,
        amp=amp,
        kv_cache=kv_cache,
        align=align,
        compile=compile,
    )
    best, step_s = [], []
    for _ in range(opt_steps):
        t0 = time.perf_counter()
        # ---- sample around the mean; sample 0 is the mean (reference) ----
        noise = randn((b, num_samples, horizon, a_dim), generator, device)
        samples = mean[:, None] + std[:, None] * noise
        samples[:, 0] = mean
        if bounds is not None:
            samples = bounds.clamp(samples)
        # ---- score all B*N sequences in one batched rollout ----
        loss = evaluate_plans(wm, z_obs0, z_goal, samples.flatten(0, 1), episode, **run).view(b, num_samples)
        # ---- refit to the top-k of each episode ----
        top_loss, top_idx = loss.topk(topk, dim=1, largest=False, sorted=True)
        elites = samples.gather(1, top_idx[:, :, None, None].expand(-1, -1, horizon, a_dim))
        mean, std = elites.mean(dim=1), elites.std(dim=1)
        best.append(top_loss[:, 0])
        step_s.append(time.perf_counter() - t0)
    final = evaluate_plans(wm, z_obs0, z_goal, mean, torch.arange(b, device=device), **run)
    log.debug("cem: best loss %s after %d steps", best[-1].tolist(), opt_steps)
    info = {
        "best_loss": torch.stack(best),  # (opt_steps, B): lowest sampled loss per iteration
        "final_std": std,
        "step_s": step_s,
        "n_rollouts": opt_steps * b * num_samples + b,
    }
    return PlanResult(actions=mean, loss=final, info=info)


@torch.no_grad()
def cem_plan_discrete(
    wm: Any,
    z_obs0: Obs,
    z_goal: Obs,
    *,
    horizon: int,
    action_set: torch.Tensor,
    num_samples: int = 100,
    topk: int = 10,
    opt_steps: int = 10,
    smoothing: float = 0.1,
    objective_kw: dict[str, Any] | None = None,
    generator: Generators = None,
    chunk_size: int | None = None,
    amp: bool = False,
    context_actions: torch.Tensor | None = None,
) -> PlanResult:
    """CEM over a fixed action set (K, A) in model space: a categorical per step, refit to elite frequencies.

    The new distribution is ``(1 - smoothing) * elite_frequency + smoothing * old`` (keeps every action
    reachable); sample 0 is the current mode. Returns the mode's actions and ``info["indices"]`` (B, H).
    """
    if num_samples < 1 or opt_steps < 1 or not 1 <= topk <= num_samples:
        raise ValueError(
            f"need 1 <= topk <= num_samples and opt_steps >= 1, got {topk}, {num_samples}, {opt_steps}"
        )
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if action_set.ndim != 2 or action_set.shape[0] < 1:
        raise ValueError(f"action_set must be (K, A), got {tuple(action_set.shape)}")
    check_plan_inputs(
        wm, z_obs0, z_goal, horizon=horizon, action_dim=action_set.shape[1], context_actions=context_actions
    )
    b, device = batch_size(z_obs0, z_goal), z_obs0["visual"].device
    action_set = action_set.to(device, torch.float32)
    k = action_set.shape[0]
    probs = torch.full((b, horizon, k), 1.0 / k, device=device)
    episode = torch.arange(b, device=device).repeat_interleave(num_samples)
    run = dict(objective_kw=objective_kw, context_actions=context_actions, chunk_size=chunk_size, amp=amp)
    best = []
    for _ in range(opt_steps):
        idx = multinomial(probs, num_samples, generator)  # (B, N, H)
        idx[:, 0] = probs.argmax(-1)
        loss = evaluate_plans(wm, z_obs0, z_goal, action_set[idx].flatten(0, 1), episode, **run)
        top_loss, top = loss.view(b, num_samples).topk(topk, dim=1, largest=False)
        elite_idx = idx.gather(1, top[:, :, None].expand(-1, -1, horizon))  # (B, K, H)
        freq = torch.nn.functional.one_hot(elite_idx, k).float().mean(dim=1)  # (B, H, K)
        probs = (1 - smoothing) * freq + smoothing * probs
        best.append(top_loss[:, 0])
    mode = probs.argmax(-1)
    actions = action_set[mode]
    final = evaluate_plans(wm, z_obs0, z_goal, actions, torch.arange(b, device=device), **run)
    return PlanResult(
        actions=actions, loss=final, info={"indices": mode, "probs": probs, "best_loss": torch.stack(best)}
    )

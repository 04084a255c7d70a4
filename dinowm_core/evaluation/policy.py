"""The policies of a planning evaluation: observations in, env actions out (reference sections 5.1, 5.7).

A *policy* has two verbs, shaped so that it can sit in the driver, in a Ray actor or behind a Serve
deployment:

* ``reset(episode_seeds, seed)`` before a batch of episodes (clears MPC warm starts, seeds the sampler);
* ``plan(obs, goal, steps_left) -> (B, n, d)`` env-unit actions for the next ``n`` env steps of every episode,
  from a batch of raw observations ``{"visual": uint8 (B, H, W, 3), "proprio": (B, Dp)}`` and goal
  observations; ``steps_left``: the env steps left in the episodes' budget (None: unbounded), where plans
  end with ``planner.end_at_budget``.

:class:`ModelPolicy` plans through a world model with the one planner interface (MPC: ``closed_loop``;
open-loop CEM/GD: one plan, executed whole), mapping env data through
:class:`~dinowm_core.evaluation.adapter.ModelAdapter`; :class:`RandomPolicy` is the baseline (uniform actions
in the env's action box, per-episode RNG).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch

from dinowm_core.evaluation.adapter import ModelAdapter
from dinowm_core.planning.common import discrete_action_set, normalized_zero_action
from dinowm_core.planning.planner import Planner, PlanState, budget_horizon, make_planner

Obs = dict[str, np.ndarray]


class Policy(Protocol):
    #: False = one plan per episode (open loop): the evaluation stops asking after the first call
    closed_loop: bool

    def reset(self, episode_seeds: list[int], seed: int) -> None: ...

    def plan(self, obs: Obs, goal: Obs, steps_left: int | None = None) -> np.ndarray: ...


class ModelPolicy:
    """Plans with a world model through a :class:`~dinowm_core.planning.planner.Planner`, holding its state
    between calls; ``closed_loop`` is the planner's (MPC replans, an open-loop plan is executed whole)."""

    def __init__(self, adapter: ModelAdapter, planner: Planner) -> None:
        self.adapter, self.planner, self.closed_loop = adapter, planner, planner.closed_loop
        self.state: PlanState | None = None

    def reset(
        self, episode_seeds: list[int], seed: int, *, memory: dict[str, torch.Tensor] | None = None
    ) -> None:
        """One RNG stream per episode, seeded by (seed, episode seed): a plan does not depend on which other
        episodes share the batch. ``memory``: a memory predictor's memory of what the episodes saw before
        (``(B, ...)`` tensors, e.g. ``ModelImaginer.read``); default: empty."""
        seeds = [_mix(seed, s) for s in episode_seeds]
        self.state = self.planner.init_state(len(seeds), seeds, device=self.adapter.device)
        if memory:
            self.state = replace(self.state, memory={k: v.to(self.adapter.device) for k, v in memory.items()})

    def plan(self, obs: Obs, goal: Obs, steps_left: int | None = None) -> np.ndarray:
        if self.state is None or self.state.batch_size != len(obs["visual"]):
            have = "no" if self.state is None else self.state.batch_size
            raise RuntimeError(f"reset() was given {have} episodes, plan() {len(obs['visual'])}")
        z_obs, z_goal = self.adapter.encode(obs), self.adapter.encode(goal)
        cfg, horizon = self.planner.cfg, None
        if steps_left is not None and cfg.end_at_budget:
            horizon = budget_horizon(cfg.horizon, self.adapter.wm.cfg.frameskip, steps_left)
        result, self.state = self.planner.plan(z_obs, z_goal, self.state, horizon=horizon)
        return self.adapter.to_env_actions(result.execute)


def _mix(seed: int, episode_seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(episode_seed)]).generate_state(1, np.uint64)[0] >> 1)


class RandomPolicy:
    """Uniform env-unit actions in ``[low, high]``, ``chunk`` env steps per call, one RNG per episode.

    Each episode's action stream depends only on its episode seed, whatever the batch or chunking.
    """

    closed_loop = True

    def __init__(self, low: np.ndarray, high: np.ndarray, chunk: int, *, discrete: bool = False) -> None:
        self.low, self.high, self.chunk = (
            np.asarray(low, np.float64),
            np.asarray(high, np.float64),
            int(chunk),
        )
        self.discrete = discrete  # whole numbers in [low, high] (a discrete env's action indices)
        if not np.all(np.isfinite(self.low) & np.isfinite(self.high)):
            raise ValueError("the random baseline needs a bounded action box")
        self.rngs: list[np.random.Generator] = []

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        self.rngs = [np.random.default_rng([int(s), 0x5EED]) for s in episode_seeds]

    def plan(self, obs: Obs, goal: Obs, steps_left: int | None = None) -> np.ndarray:
        if self.discrete:
            shape = (self.chunk, len(self.low))
            return np.stack(
                [r.integers(self.low, self.high + 1, shape).astype(np.float64) for r in self.rngs]
            )
        return np.stack([r.uniform(self.low, self.high, (self.chunk, len(self.low))) for r in self.rngs])


def build_policy(
    cfg: Any, *, adapter: ModelAdapter | None, action_box: tuple[np.ndarray, np.ndarray] | None = None
) -> Policy:
    """The evaluation's policy: ``eval.policy=random`` (needs ``action_box``) or ``cfg.planner`` via
    :func:`dinowm_core.planning.planner.make_planner` (no action bounds, as the reference)."""
    p = cfg.planner
    if cfg.eval.policy == "random":
        if action_box is None:
            raise ValueError("the random baseline needs the env's action box")
        n_taken = p.mpc.n_taken_actions if p.name.startswith("mpc_") else p.horizon
        discrete = cfg.env.num_actions is not None
        return RandomPolicy(*action_box, chunk=cfg.frameskip * n_taken, discrete=discrete)
    if adapter is None:
        raise ValueError(f"planner {p.name} needs a world model")
    zero = normalized_zero_action(adapter.normalizer, cfg.env.action_dim, cfg.frameskip).to(adapter.device)
    action_set = discrete_action_set(adapter.normalizer)
    if p.name.endswith("cem_discrete") and action_set is None:
        raise ValueError(
            f"planner.name={p.name} plans over a discrete action set, but env {cfg.env.name} is continuous "
            "(env.num_actions is not set)"
        )
    return ModelPolicy(adapter, make_planner(p, adapter.wm, zero_action=zero, action_set=action_set))

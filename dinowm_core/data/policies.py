"""Data-collection policies: ``random`` (reference data for wall / point_maze), ``noisy_goal``, ``pusht_push`` and
``explore`` (Memory-Maze); the ``four_rooms_*`` / ``two_rooms_bfs`` presets live in
:mod:`dinowm_core.data.four_rooms_policies`. A mixture ``a+b`` (e.g. ``random+noisy_goal``) rolls one of its
parts per episode, each with equal probability, or with the
given weights (``random:3+noisy_goal:1``).

A policy is built per episode with its own ``numpy.random.Generator`` (derived from the dataset seed and the
episode index), sees only the raw env state and returns an action in env units. :func:`make_policy` checks
that the named policy suits the env.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dinowm_core.data import four_rooms_policies
from dinowm_core.envs.base import PlanningEnv

Policy = Callable[[np.ndarray], np.ndarray]


def action_bounds(env: PlanningEnv) -> tuple[np.ndarray, np.ndarray]:
    """The env's action box (``[-1, 1]^d`` when it declares none)."""
    space = getattr(env, "action_space", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None or not np.all(np.isfinite(low)) or not np.all(np.isfinite(high)):
        return -np.ones(env.action_dim), np.ones(env.action_dim)
    return np.asarray(low, np.float64).reshape(-1), np.asarray(high, np.float64).reshape(-1)


class RandomPolicy:
    """Uniform in the action box (a discrete env: uniform over its action indices), independent across steps."""

    def __init__(self, env: PlanningEnv, rng: np.random.Generator) -> None:
        self.num_actions = getattr(env, "num_actions", None)
        if self.num_actions is None:
            self.low, self.high = action_bounds(env)
        self.rng = rng

    def __call__(self, state: np.ndarray) -> np.ndarray:
        if self.num_actions is not None:
            return np.array([self.rng.integers(self.num_actions)], np.int64)
        return self.rng.uniform(self.low, self.high)


class StickyRandomPolicy:
    """Uniform random actions, each held for a geometric number of steps (mean ``mean_hold``).

    Unlike :class:`RandomPolicy`, whose independent steps jitter in place (on Wall a 50-step episode drifts
    about 9 px), held actions travel: the agent runs into walls from every side and angle and now and then
    through a gap, which a world model has to see to predict contact.
    """

    def __init__(self, env: PlanningEnv, rng: np.random.Generator, mean_hold: float = 8.0) -> None:
        if getattr(env, "num_actions", None) is not None:
            raise ValueError("sticky_random: for continuous actions (a discrete env has its own presets)")
        self.low, self.high = action_bounds(env)
        self.rng, self.mean_hold = rng, mean_hold
        self.action, self.left = self.low, 0

    def __call__(self, state: np.ndarray) -> np.ndarray:
        if self.left <= 0:
            self.action = self.rng.uniform(self.low, self.high)
            self.left = int(self.rng.geometric(1.0 / self.mean_hold))
        self.left -= 1
        return self.action.copy()


# Per-env proportional-derivative gains for ``noisy_goal``: action = kp * (goal - pos) - kd * vel on the
# first two state dims (wall: position, action = displacement / 2; point_maze: xy with force actions;
# reacher: joint angles with torques).
_GOAL_GAINS = {"wall": (0.5, 0.0), "point_maze": (2.0, 0.6), "reacher": (3.0, 0.3)}


class NoisyGoalPolicy:
    """Drive toward goals from ``env.sample_init_goal``, resampled on arrival, with Gaussian action noise.

    Wall: when the goal is across the wall, aim at the door first. Noise std is ``noise`` x the box half-width.
    """

    def __init__(
        self, env: PlanningEnv, rng: np.random.Generator, noise: float = 0.3, max_goal_steps: int = 60
    ):
        if env.env_name not in _GOAL_GAINS:
            raise ValueError(
                f"noisy_goal: no controller for env {env.env_name!r} (have {sorted(_GOAL_GAINS)})"
            )
        self.env, self.rng = env, rng
        self.kp, self.kd = _GOAL_GAINS[env.env_name]
        self.low, self.high = action_bounds(env)
        self.noise = noise * (self.high - self.low) / 2
        self.max_goal_steps = max_goal_steps
        self.goal: np.ndarray | None = None
        self.age = 0

    def _new_goal(self) -> None:
        self.goal = np.asarray(self.env.sample_init_goal(int(self.rng.integers(2**31)))[1], np.float64)
        self.age = 0

    def _target(self, state: np.ndarray) -> np.ndarray:
        assert self.goal is not None
        params: dict[str, Any] = self.env.env_params
        across = "wall_x" in params and (state[0] - params["wall_x"]) * (self.goal[0] - params["wall_x"]) < 0
        if across and "door_y" in params:
            return np.array([params["wall_x"], params["door_y"]], np.float64)
        return self.goal[:2]

    def __call__(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, np.float64)
        if (
            self.goal is None
            or self.age >= self.max_goal_steps
            or self.env.eval_state(self.goal, state)["success"]
        ):
            self._new_goal()
        self.age += 1
        vel = state[2:4] if len(state) >= 4 and self.kd else 0.0
        a = self.kp * (self._target(state) - state[:2]) - self.kd * vel
        a = a + self.rng.normal(0.0, self.noise)
        return np.clip(a, self.low, self.high)


class PushTPolicy:
    """Scripted noisy pusher for PushT (state [ax, ay, bx, by, angle, avx, avy]).

    Reasons in pixels, returns env units: PushT's relative actions are in units of ``PIXELS_PER_UNIT`` (100) px.

    Picks a push direction (toward the workspace centre, perturbed), goes behind the block relative to it
    (around the block's side when in front of it), then pushes through it; re-plans every ``replan`` steps.
    """

    PIXELS_PER_UNIT = 100.0

    def __init__(
        self,
        env: PlanningEnv,
        rng: np.random.Generator,
        *,
        workspace: float = 512.0,
        standoff: float = 45.0,
        push_speed: float = 25.0,
        max_step: float = 60.0,
        noise: float = 6.0,
        replan: int = 25,
    ) -> None:
        self.rng = rng
        self.center = np.full(2, workspace / 2)
        self.spread = workspace / 4
        self.standoff, self.push_speed, self.max_step, self.noise, self.replan = (
            standoff, push_speed, max_step, noise, replan
        )  # fmt: skip
        self.dir = np.array([1.0, 0.0])
        self.t = 0

    def _choose_direction(self, block: np.ndarray) -> None:
        target = self.center + self.rng.normal(0.0, self.spread, 2)
        d = target - block
        n = np.linalg.norm(d)
        self.dir = d / n if n > 1e-6 else np.array([1.0, 0.0])

    def __call__(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, np.float64)
        agent, block = state[0:2], state[2:4]
        if self.t % self.replan == 0:
            self._choose_direction(block)
        self.t += 1
        contact = block - self.standoff * self.dir
        rel = agent - block
        ahead = float(rel @ self.dir)
        if ahead > -0.5 * self.standoff:  # in front of or beside the block: go around its side first
            perp = np.array([-self.dir[1], self.dir[0]])
            side = 1.0 if rel @ perp >= 0 else -1.0
            target = block + side * 1.6 * self.standoff * perp - 0.5 * self.standoff * self.dir
        elif np.linalg.norm(agent - contact) > 0.4 * self.standoff:
            target = contact
        else:  # behind the block and lined up: push through it, correcting sideways drift
            off = contact - agent
            lateral = off - (off @ self.dir) * self.dir
            target = agent + self.push_speed * self.dir + 0.5 * lateral
        a = target - agent + self.rng.normal(0.0, self.noise, 2)
        n = np.linalg.norm(a)
        a = a * (self.max_step / n) if n > self.max_step else a
        return a / self.PIXELS_PER_UNIT


class ExplorePolicy:
    """Memory-Maze exploration: a random walk over the discrete actions with persistence, turning at walls.

    An action is held for a geometric number of steps (mean ``mean_hold``), so the agent crosses rooms
    instead of jittering in place; forward moves are the most likely. A forward move that advances the agent
    less than ``stuck_dist`` metres (a free forward step covers ~0.4 m) counts as blocked: the policy then turns
    one way for a few steps. Reads state ``[x, y, ...]`` (world metres) and returns an index of shape (1,), int64.
    """

    NOOP, FORWARD, LEFT, RIGHT, FORWARD_LEFT, FORWARD_RIGHT = range(6)
    _CHOICES = np.array([NOOP, FORWARD, LEFT, RIGHT, FORWARD_LEFT, FORWARD_RIGHT])
    # Tuned on coverage (distinct cells visited in 300 steps): 15-17 of 3x7's 19 cells against 7-9 with half as
    # many forward draws and shorter turns, and 1-4 for uniform random actions.
    _WEIGHTS = np.array([0.02, 0.6, 0.08, 0.08, 0.11, 0.11])

    def __init__(
        self, env: PlanningEnv, rng: np.random.Generator, mean_hold: float = 5.0, stuck_dist: float = 0.15
    ) -> None:
        self.rng, self.mean_hold, self.stuck_dist = rng, mean_hold, stuck_dist
        self.action, self.left = self.NOOP, 0
        self.prev: np.ndarray | None = None

    def __call__(self, state: np.ndarray) -> np.ndarray:
        pos = np.asarray(state[:2], np.float64)
        moving = self.action in (self.FORWARD, self.FORWARD_LEFT, self.FORWARD_RIGHT)
        if moving and self.prev is not None and np.linalg.norm(pos - self.prev) < self.stuck_dist:
            self.action = int(self.rng.choice([self.LEFT, self.RIGHT]))
            self.left = int(self.rng.integers(4, 10))  # a turn step is ~20 deg: turn away by 80-190 deg
        elif self.left <= 0:
            self.action = int(self.rng.choice(self._CHOICES, p=self._WEIGHTS))
            self.left = int(self.rng.geometric(1.0 / self.mean_hold))
        self.left -= 1
        self.prev = pos
        return np.array([self.action], np.int64)


POLICIES: dict[str, tuple[Callable[..., Policy], tuple[str, ...] | None]] = {
    "random": (RandomPolicy, None),
    "sticky_random": (StickyRandomPolicy, ("wall", "point_maze", "pusht", "reacher")),
    "noisy_goal": (NoisyGoalPolicy, tuple(_GOAL_GAINS)),
    "pusht_push": (PushTPolicy, ("pusht",)),
    **{name: (cls, ("four_rooms",)) for name, cls in four_rooms_policies.POLICIES.items()},
    "explore": (ExplorePolicy, ("memory_maze",)),
}


MIXTURE_SEP = "+"


def policy_parts(name: str) -> list[tuple[str, float]]:
    """The policies of a mixture ``a+b`` or ``a:3+b:1`` with their probabilities (weights default to 1);
    ``[(name, 1.0)]`` for a plain policy."""
    parts: list[tuple[str, float]] = []
    for item in name.split(MIXTURE_SEP):
        part, _, weight = item.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = -1.0
        if not part or not w > 0 or part in {p for p, _ in parts}:
            raise ValueError(f"policy mixture {name!r}: name each policy once, joined by {MIXTURE_SEP!r}, "
                             "each with an optional positive weight (e.g. random:3+noisy_goal:1)")  # fmt: skip
        parts.append((part, w))
    total = sum(w for _, w in parts)
    return [(p, w / total) for p, w in parts]


def check_policy(name: str, env_name: str) -> None:
    """Raise ``ValueError`` unless policy ``name`` (or each part of a mixture) exists and suits env
    ``env_name`` (needs no env instance)."""
    for part, _ in policy_parts(name):
        _check_one(part, env_name)


def _check_one(name: str, env_name: str) -> None:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (choices: {', '.join(POLICIES)})")
    envs = POLICIES[name][1]
    if envs is not None and env_name not in envs:
        usable = [p for p, (_, e) in POLICIES.items() if e is None or env_name in e]
        raise ValueError(
            f"policy {name!r} supports envs {', '.join(envs)}, not {env_name!r} "
            f"(policies for {env_name}: {', '.join(usable)})"
        )


def preset_env_kwargs(name: str) -> dict[str, Any]:
    """Env kwargs that policy preset ``name`` needs (``two_rooms_bfs``: the two-rooms layout); a mixture's
    parts must agree on them, since every episode of a dataset shares one env."""
    kwargs = [dict(four_rooms_policies.PRESET_ENV_KWARGS.get(p, {})) for p, _ in policy_parts(name)]
    if any(k != kwargs[0] for k in kwargs):
        raise ValueError(f"policy mixture {name!r}: its parts need different env settings ({kwargs})")
    return kwargs[0]


def make_policy(name: str, env: PlanningEnv, rng: np.random.Generator) -> Policy:
    """Build policy ``name`` for one episode of ``env`` (a mixture: one of its parts, drawn from ``rng``)."""
    check_policy(name, env.env_name)
    parts = policy_parts(name)
    # a plain policy draws nothing here, so its episodes stay as they were
    pick = 0 if len(parts) == 1 else int(rng.choice(len(parts), p=[w for _, w in parts]))
    return POLICIES[parts[pick][0]][0](env, rng)

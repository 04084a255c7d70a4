"""The env side of a planning evaluation: episodes that own a real env (reference section 5.7, env rollout).

:class:`EpisodeRunner` holds one env and one episode at a time: it resets to a :class:`Target`, reports the
current observation, executes env-unit actions under a fixed env-step budget and measures the outcome.
:class:`EpisodeGroup` is a few runners behind one object, the unit an env process (or Ray actor) owns.
Nothing here imports torch or a model, so an env worker stays light; the planner lives elsewhere.

Success is evaluated at the end of the budget (the headline); "success at any step" is a secondary, labelled
metric checked at reset and after *every* env step (finer than anything the reference measures). Only
``oracle_stop=True`` lets the simulator's success end an episode early, at the reference MPC's granularity
(section 5.6): success is checked once per executed chunk, i.e. at the end of each :meth:`EpisodeRunner.step`
call (one MPC iteration's ``n_taken_actions * frameskip`` env steps, or a whole open-loop plan), never before
the first chunk; results say so (``stopped_by_oracle``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinowm_core.envs.base import PlanningEnv, make_env
from dinowm_core.evaluation.goals import Target
from dinowm_core.evaluation.records import EpisodeMetrics, EpisodeOutcome, Obs


class EpisodeRunner:
    """One env, one episode at a time. Actions are in env units, one row per env step."""

    def __init__(self, env: PlanningEnv, *, budget: int, frameskip: int, oracle_stop: bool = False) -> None:
        if budget < 1 or frameskip < 1:
            raise ValueError(f"budget and frameskip must be >= 1, got {budget}, {frameskip}")
        self.env, self.budget, self.frameskip, self.oracle_stop = env, budget, frameskip, oracle_stop
        self.target: Target | None = None

    def reset(self, target: Target, *, index: int = 0, record: bool = False) -> Obs:
        self.target, self.index, self.record = target, index, record
        obs, info = self.env.reset(
            seed=target.episode_seed, options={"state": target.init_state, "env_params": target.env_params}
        )
        self.obs, self.obs0 = obs, obs
        self.steps, self.first_success, self.stopped_by_oracle = 0, None, False
        self.min_distance = float("inf")
        self.actions: list[np.ndarray] = []
        # The obs at every model step (each frameskip env steps), to compare with the model's imagination.
        self.model_step_obs: list[Obs] = [obs]
        self.frames: list[np.ndarray] = [obs["visual"]] if record else []
        # A partially observed env (four_rooms) also draws the whole map, with the goal cell, for the video.
        self.maps: list[np.ndarray] = []
        self._map = getattr(self.env, "render_full", None) if record else None
        if self._map is not None:
            self.maps.append(self._map(goal=target.goal_state))
        self._measure(info["state"])
        return obs

    @property
    def done(self) -> bool:
        return self.steps >= self.budget or self.stopped_by_oracle

    def _measure(self, state: np.ndarray) -> dict[str, Any]:
        assert self.target is not None
        ev = self.env.eval_state(self.target.goal_state, state)
        self.min_distance = min(self.min_distance, float(ev.get("distance", np.nan)))
        if ev["success"] and self.first_success is None:
            self.first_success = self.steps
        self.last_eval, self.state = ev, np.asarray(state, np.float64)
        return ev

    def step(self, actions: np.ndarray) -> int:
        """Execute one chunk: up to ``len(actions)`` env steps (fewer when the budget ends it).

        With ``oracle_stop`` the episode ends after this chunk if the state it leaves is a success (the
        reference evaluates each MPC iteration's rollout at its end; passing the goal mid-chunk does not count).
        """
        n = 0
        for a in np.asarray(actions, np.float64):
            if self.done:
                break
            self.obs, _, _, _, info = self.env.step(a)
            self.steps += 1
            n += 1
            self.actions.append(a)
            if self.steps % self.frameskip == 0:
                self.model_step_obs.append(self.obs)
            if self.record:
                self.frames.append(self.obs["visual"])
                if self._map is not None:
                    self.maps.append(self._map(goal=self.target.goal_state))
            self._measure(info["state"])
        if self.oracle_stop and n > 0 and self.last_eval["success"]:
            self.stopped_by_oracle = True
        return n

    def result(self) -> EpisodeOutcome:
        """The episode's metrics and the arrays the model side needs."""
        assert self.target is not None
        final = {k: _scalar(v) for k, v in self.last_eval.items()}
        metrics = EpisodeMetrics(
            index=self.index,
            episode_seed=int(self.target.episode_seed),
            success=bool(final.pop("success")),
            success_any_step=self.first_success is not None,
            first_success_step=self.first_success,
            min_distance=self.min_distance,
            env_steps=self.steps,
            stopped_by_oracle=self.stopped_by_oracle,
            final=final,
        )
        d = self.env.action_dim
        return EpisodeOutcome(
            metrics=metrics,
            obs0=self.obs0,
            model_step_obs=self.model_step_obs[-1],
            actions=np.stack(self.actions) if self.actions else np.zeros((0, d)),
            frames=np.stack(self.frames) if self.record else None,
            goal_visual=self.target.goal_obs.get("visual"),
            maps=np.stack(self.maps) if self.maps else None,
        )


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def stack_obs(obs: list[Obs]) -> Obs:
    return {k: np.stack([o[k] for o in obs]) for k in obs[0]}


class EpisodeGroup:
    """``n_slots`` runners, each with its own env (one Ray env actor holds one group).

    Built from plain arguments so it can be constructed inside another process.
    """

    def __init__(
        self,
        env_name: str,
        n_slots: int,
        *,
        img_size: int,
        budget: int,
        frameskip: int,
        oracle_stop: bool = False,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.runners = [
            EpisodeRunner(make_env(env_name, img_size=img_size, **(env_kwargs or {})), budget=budget,
                          frameskip=frameskip, oracle_stop=oracle_stop)
            for _ in range(n_slots)
        ]  # fmt: skip
        self.n_active = 0

    def action_box(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the env's action box; a discrete env: its index range [0, n - 1]."""
        space = self.runners[0].env.action_space
        if hasattr(space, "n"):
            return np.zeros(1), np.array([space.n - 1], np.float64)
        return np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)

    def reset(self, targets: list[Target], indices: list[int], record: list[bool]) -> None:
        if len(targets) > len(self.runners):
            raise ValueError(f"{len(targets)} episodes for {len(self.runners)} env slots")
        self.n_active = len(targets)
        for r, t, i, rec in zip(self.runners, targets, indices, record, strict=True):
            r.reset(t, index=i, record=rec)

    def observe(self) -> tuple[Obs, Obs, np.ndarray]:
        """(current obs, goal obs, done flags) of the active slots, stacked."""
        active = self.runners[: self.n_active]
        goals = [r.target.goal_obs for r in active]  # type: ignore[union-attr]
        done = np.array([r.done for r in active])
        return stack_obs([r.obs for r in active]), stack_obs(goals), done

    def progress(self) -> tuple[np.ndarray, np.ndarray]:
        """(done, at the goal now) flags of the active slots: what a progress line reports."""
        active = self.runners[: self.n_active]
        return np.array([r.done for r in active]), np.array([bool(r.last_eval["success"]) for r in active])

    def step(self, actions: np.ndarray) -> list[int]:
        """actions (n_active, n, d): each slot runs its row (finished slots run nothing)."""
        return [r.step(a) for r, a in zip(self.runners[: self.n_active], actions, strict=True)]

    def results(self) -> list[EpisodeOutcome]:
        return [r.result() for r in self.runners[: self.n_active]]

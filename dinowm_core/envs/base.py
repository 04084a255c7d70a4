"""The planning-environment protocol shared by every dinowm environment.

A planning env is a gymnasium ``Env`` with a few extra verbs the world-model pipeline needs
(reference DINO-WM section 6.1, "per-env contract"):

* ``reset(options={"state": s, "env_params": p})`` puts the env exactly into raw state ``s``
  (and, for envs with per-episode layout such as Wall's door, into layout ``p``);
* ``eval_state(goal_state, state)`` -> ``{"success": bool, "distance": float, ...}``;
* ``sample_init_goal(seed)`` -> ``(init_state, goal_state)``, deterministic for a seed;
* ``get_state()`` the raw state; ``env_params`` the parameters needed to rebuild the episode;
* ``rollout(init_state, actions)`` replays actions from a state and returns every frame.

Observations are ``{"visual": uint8 (H, W, 3), "proprio": float32 (Dp,)}``; ``info["state"]`` is the raw
state (float64); actions are in env units (not normalized).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PlanningEnv(gym.Env):
    """Base class: subclasses implement the ``_``-prefixed hooks and set the class attributes."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    #: short name used in configs and dataset manifests ("wall", "pusht", ...)
    env_name: str = ""
    state_dim: int = 0
    proprio_dim: int = 0
    action_dim: int = 0

    def __init__(self, img_size: int = 224, render_mode: str | None = "rgb_array") -> None:
        super().__init__()
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.img_size = int(img_size)
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(
            {
                "visual": spaces.Box(0, 255, (self.img_size, self.img_size, 3), np.uint8),
                "proprio": spaces.Box(-np.inf, np.inf, (self.proprio_dim,), np.float32),
            }
        )

    # ---- hooks for subclasses -------------------------------------------------------------------
    def _set_state(self, state: np.ndarray) -> None:
        raise NotImplementedError

    def _random_state(self) -> np.ndarray:
        """A random valid start state drawn from ``self.np_random`` (used by a plain ``reset()``)."""
        raise NotImplementedError

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        """Advance the simulation by one env step; return extra info entries."""
        raise NotImplementedError

    def get_state(self) -> np.ndarray:
        raise NotImplementedError

    def get_proprio(self) -> np.ndarray:
        raise NotImplementedError

    def render(self) -> np.ndarray:
        raise NotImplementedError

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def env_params(self) -> dict[str, Any]:
        """JSON-serializable parameters that, with a state, reconstruct an episode."""
        return {}

    def set_env_params(self, params: dict[str, Any]) -> None:
        if params:
            raise ValueError(f"{self.env_name}: takes no env params, got {sorted(params)}")

    def reward(self, state: np.ndarray) -> float:
        return 0.0

    # ---- gymnasium API --------------------------------------------------------------------------
    def _obs(self) -> dict[str, np.ndarray]:
        return {"visual": self.render(), "proprio": self.get_proprio().astype(np.float32)}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"state", "env_params"}
        if unknown:
            raise ValueError(f"{self.env_name}: unknown reset options {sorted(unknown)}")
        if "env_params" in options:
            self.set_env_params(options["env_params"] or {})
        if options.get("state") is not None:
            state = np.asarray(options["state"], dtype=np.float64)
            if state.shape != (self.state_dim,):
                raise ValueError(
                    f"{self.env_name}: state must have shape ({self.state_dim},), got {state.shape}"
                )
            self._set_state(state)
        else:
            self._set_state(self._random_state())
        return self._obs(), {"state": self.get_state()}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(self.action_dim)
        extra = self._step_dynamics(action)
        state = self.get_state()
        info = {"state": state, **extra}
        return self._obs(), float(self.reward(state)), False, False, info

    # ---- planning helpers -----------------------------------------------------------------------
    def rollout(
        self,
        init_state: np.ndarray,
        actions: np.ndarray,
        env_params: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Reset to ``init_state`` and apply ``actions`` (T, d).

        Returns ``(obs, states)`` with ``obs["visual"]`` (T+1, H, W, 3), ``obs["proprio"]`` (T+1, Dp) and
        ``states`` (T+1, Ds); index 0 is the initial frame.
        """
        options: dict[str, Any] = {"state": init_state}
        if env_params is not None:
            options["env_params"] = env_params
        obs, info = self.reset(seed=seed, options=options)
        visual, proprio, states = [obs["visual"]], [obs["proprio"]], [info["state"]]
        for a in np.asarray(actions):
            obs, _, _, _, info = self.step(a)
            visual.append(obs["visual"])
            proprio.append(obs["proprio"])
            states.append(info["state"])
        return {"visual": np.stack(visual), "proprio": np.stack(proprio)}, np.stack(states)


ENV_IDS = {
    "wall": "dinowm/Wall-v0",
    "point_maze": "dinowm/PointMaze-v0",
    "pusht": "dinowm/PushT-v0",
    "rope": "dinowm/Rope-v0",
    "granular": "dinowm/Granular-v0",
    "reacher": "dinowm/Reacher-v0",
    "four_rooms": "dinowm/FourRooms-v0",
    "memory_maze": "dinowm/MemoryMaze-v0",
}


def make_env(name: str, img_size: int = 224, **kwargs: Any) -> PlanningEnv:
    """Build the unwrapped planning env for a config name (``wall``, ``pusht``, ...)."""
    import dinowm_core.envs  # noqa: F401  (registers the ids)

    if name not in ENV_IDS:
        raise ValueError(f"unknown env {name!r} (choices: {', '.join(ENV_IDS)})")
    env = gym.make(ENV_IDS[name], img_size=img_size, disable_env_checker=True, **kwargs)
    return env.unwrapped  # type: ignore[return-value]

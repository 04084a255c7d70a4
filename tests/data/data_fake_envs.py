"""A tiny PlanningEnv for data tests: a dot in a box, pure numpy, importable by spawned workers."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from dinowm_core.envs.base import PlanningEnv


class FakeDotEnv(PlanningEnv):
    """state = proprio = [x, y] in [0, 1]^2; x += 0.1 * action; the frame shows the dot and a layout stripe."""

    env_name = "wall"
    state_dim = 2
    proprio_dim = 2
    action_dim = 2

    def __init__(self, img_size: int = 16, stripe: int = 3) -> None:
        super().__init__(img_size=img_size)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.stripe = stripe
        self._pos = np.full(2, 0.5)

    @property
    def env_params(self) -> dict[str, Any]:
        return {"stripe": self.stripe}

    def set_env_params(self, params: dict[str, Any]) -> None:
        self.stripe = int(params.get("stripe", self.stripe))

    def _set_state(self, state: np.ndarray) -> None:
        self._pos = np.array(state, np.float64)

    def _random_state(self) -> np.ndarray:
        return self.np_random.uniform(0.1, 0.9, 2)

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        self._pos = np.clip(self._pos + 0.1 * action, 0.0, 1.0)
        return {}

    def get_state(self) -> np.ndarray:
        return self._pos.copy()

    def get_proprio(self) -> np.ndarray:
        return self._pos.copy()

    def render(self) -> np.ndarray:
        n = self.img_size
        frame = np.full((n, n, 3), 255, np.uint8)
        frame[:, self.stripe % n] = 0
        r, c = (self._pos * (n - 1)).round().astype(int)
        frame[r, c] = (255, 0, 0)
        return frame

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        d = float(np.linalg.norm(np.asarray(goal_state) - np.asarray(state)))
        return {"success": d < 0.05, "distance": d}

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return rng.uniform(0.1, 0.9, 2), rng.uniform(0.1, 0.9, 2)


class FailingEnv(FakeDotEnv):
    """A FakeDotEnv whose ``fail_at``-th reset raises, as a simulator crash in the generating process."""

    def __init__(self, img_size: int = 16, fail_at: int = 4) -> None:
        super().__init__(img_size=img_size)
        self.fail_at = fail_at
        self.resets = 0

    def reset(self, *, seed=None, options=None):  # noqa: ANN001, ANN201
        self.resets += 1
        if self.resets == self.fail_at:
            raise RuntimeError(f"simulator crashed at reset {self.resets}")
        return super().reset(seed=seed, options=options)


class ThreadProbeEnv(FakeDotEnv):
    """A FakeDotEnv that reports, as an env param, how many threads the BLAS pools had at its last reset."""

    blas_threads = 0

    @property
    def env_params(self) -> dict[str, Any]:
        return {"stripe": self.stripe, "blas_threads": self.blas_threads}

    def reset(self, *, seed=None, options=None):  # noqa: ANN001, ANN201
        from threadpoolctl import threadpool_info

        self.blas_threads = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return super().reset(seed=seed, options=options)

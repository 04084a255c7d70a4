"""Shared fixtures for data tests: small synthetic datasets written with the real writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dinowm_core.data.writer import DatasetWriter


def synthetic_episodes(lengths: list[int], img: int = 16, seed: int = 0, state_dim: int = 3) -> list[dict]:
    """Episodes whose every value encodes (episode, step), so mix-ups are detectable."""
    rng = np.random.default_rng(seed)
    eps = []
    for e, T in enumerate(lengths):
        t = np.arange(T)
        frames = rng.integers(0, 256, (T, img, img, 3), dtype=np.uint8)
        frames[:, 0, 0, 0] = e  # episode id in the corner pixel
        frames[:, 0, 0, 1] = t % 256
        actions = np.stack([e * 1000.0 + t, -(e * 1000.0 + t)], 1).astype(np.float32) + rng.normal(
            size=(T, 2)
        )
        states = np.stack([np.full(T, e), t, rng.normal(size=T)][:state_dim], 1).astype(np.float64)
        proprio = states[:, :2].astype(np.float32)
        eps.append({"frames": frames, "actions": actions.astype(np.float32), "states": states, "proprio": proprio,
                    "env_params": {"wall_x": 30 + e}})  # fmt: skip
    return eps


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., tuple[Path, list[dict]]]:
    def make(lengths: list[int], *, img: int = 16, per_shard: int = 3, name: str = "ds", env: str = "wall",
             action_scale: float = 1.0, state_dim: int = 2, extra: dict | None = None) -> tuple[Path, list[dict]]:  # fmt: skip
        eps = synthetic_episodes(lengths, img, state_dim=state_dim)
        base = {
            "env": {"name": env, "action_scale": action_scale},
            "generator": {"source": "test"},
            **(extra or {}),
        }
        out = tmp_path / name
        with DatasetWriter(out, base, episodes_per_shard=per_shard) as w:
            for ep in eps:
                w.add_episode(ep["frames"], ep["actions"], ep["states"], ep["proprio"], ep["env_params"])
        return out, eps

    return make

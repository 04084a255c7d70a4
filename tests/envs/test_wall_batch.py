"""The batched Wall step equals the env's own step: free moves, wall faces, the door, borders, many layouts."""

from __future__ import annotations

import numpy as np

from dinowm_core.envs.wall import WallEnv, collide
from dinowm_core.envs.wall_batch import collide_batch, step_batch


def _moves(n: int, seed: int):
    rng = np.random.default_rng(seed)
    p1 = rng.uniform(3.0, 62.0, (n, 2))
    p2 = p1 + rng.uniform(-12.0, 12.0, (n, 2)) * rng.choice([0.1, 1.0], (n, 1))
    p2[: n // 10, 0] = p1[: n // 10, 0]  # vertical moves
    p2[n // 10 : n // 5, 1] = p1[n // 10 : n // 5, 1]  # horizontal moves
    wall_x = rng.integers(20, 45, n).astype(float)
    door_y = rng.integers(15, 50, n).astype(float)
    return p1, p2, wall_x, door_y


def test_collide_batch_equals_collide_on_random_moves():
    p1, p2, wall_x, door_y = _moves(4000, 0)
    batched = collide_batch(p1, p2, wall_x, door_y)
    scalar = np.array(
        [collide(a, b, float(w), float(d)) for a, b, w, d in zip(p1, p2, wall_x, door_y, strict=True)]
    )
    np.testing.assert_allclose(batched, scalar, rtol=0, atol=1e-9)
    moved = ~np.isclose(batched, p2).all(axis=1)
    assert 0.1 < moved.mean() < 0.9  # contacts and free moves are both exercised


def test_step_batch_equals_env_steps_along_trajectories():
    rng = np.random.default_rng(1)
    env = WallEnv(img_size=16, wall_x=30, door_y=34)
    starts = [env.sample_init_goal(s)[0] for s in range(16)]
    actions = rng.uniform(-1, 1, (16, 25, 2))
    pos = np.array(starts)
    for t in range(25):
        pos = step_batch(pos, actions[:, t], 30, 34)
    for i in range(16):
        _, states = env.rollout(starts[i], actions[i])
        np.testing.assert_allclose(pos[i], states[-1], rtol=0, atol=1e-9)

"""PushT (reference section 6.2): gym API, exact replay, PD control, pushing, state layout, success, frames."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dinowm_core.envs  # noqa: F401  (registers the ids)
from dinowm_core.envs.pusht import GOAL_POSE, PushTEnv, coverage, t_polygons

# Agent far from the block (256, 300) so that nothing touches.
FREE_STATE = np.array([100.0, 100.0, 256.0, 300.0, 0.0, 0.0, 0.0])


@pytest.fixture
def env() -> PushTEnv:
    return PushTEnv(img_size=64)


def reset(env: PushTEnv, state: np.ndarray) -> np.ndarray:
    return env.reset(options={"state": np.asarray(state, dtype=float)})[1]["state"]


def point_polygon_distance(p: np.ndarray, poly: np.ndarray) -> float:
    """Distance from ``p`` to the boundary of a convex polygon, negative inside."""
    dists = []
    for a, b in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0, 1)
        dists.append(np.linalg.norm(p - (a + t * (b - a))))
    edges = zip(poly, np.roll(poly, -1, axis=0), strict=True)
    crosses = [(b - a)[0] * (p - a)[1] - (b - a)[1] * (p - a)[0] for a, b in edges]
    inside = all(c >= 0 for c in crosses) or all(c <= 0 for c in crosses)
    return -min(dists) if inside else min(dists)


def test_gymnasium_env_checker_passes() -> None:
    env = gym.make("dinowm/PushT-v0", img_size=64).unwrapped
    assert isinstance(env, PushTEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=False)


def test_rollout_with_contacts_replays_exactly(env: PushTEnv) -> None:
    # Agent just left of the bar, pushing right with noise: contacts every step.
    init = np.array([160.0, 315.0, 256.0, 300.0, 0.3, 0.0, 0.0])
    actions = np.array([0.25, 0.0]) + np.random.default_rng(0).normal(0, 0.1, size=(40, 2))
    obs_a, states_a = env.rollout(init, actions)
    obs_b, states_b = PushTEnv(img_size=64).rollout(init, actions)
    assert states_a.shape == (41, 7) and obs_a["visual"].shape == (41, 64, 64, 3)
    assert np.linalg.norm(states_a[-1, 2:4] - init[2:4]) > 20, "the block should have been pushed"
    np.testing.assert_array_equal(states_a, states_b)
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])
    # A second rollout on the same instance (fresh space each reset: no warm-started contacts leak).
    np.testing.assert_array_equal(env.rollout(init, actions)[1], states_a)


def test_reset_to_state_reproduces_the_state(env: PushTEnv) -> None:
    state = reset(env, FREE_STATE + [0, 0, 0, 0, 1.2, 0, 0])
    np.testing.assert_allclose(state, FREE_STATE + [0, 0, 0, 0, 1.2, 0, 0], rtol=0, atol=1e-9)
    # The one physics step of the reference's _set_state moves the kinematic agent by velocity * 0.01.
    moving = FREE_STATE + [0, 0, 0, 0, 0, 50.0, -20.0]
    state = reset(env, moving)
    np.testing.assert_allclose(state[:2], [100.5, 99.8], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(state[5:], [50.0, -20.0])
    np.testing.assert_allclose(state[2:5], moving[2:5], atol=1e-9)


@pytest.mark.parametrize(("angle", "wrapped"), [(-1.0, 2 * math.pi - 1.0), (7.0, 7.0 - 2 * math.pi)])
def test_angle_is_wrapped_to_two_pi(env: PushTEnv, angle: float, wrapped: float) -> None:
    state = reset(env, FREE_STATE + [0, 0, 0, 0, angle, 0, 0])
    assert 0 <= state[4] < 2 * math.pi
    assert state[4] == pytest.approx(wrapped, abs=1e-12)


def test_pd_control_matches_the_hand_computed_rule(env: PushTEnv) -> None:
    reset(env, FREE_STATE)
    action = np.array([0.5, -0.2])
    target = FREE_STATE[:2] + 100 * action
    pos, vel = FREE_STATE[:2].copy(), np.zeros(2)
    for _ in range(10):  # 10 substeps of 0.01 s; a kinematic body moves by velocity * dt
        vel = vel + (100 * (target - pos) + 20 * (0 - vel)) * 0.01
        pos = pos + vel * 0.01
    state = env.step(action)[4]["state"]
    np.testing.assert_allclose(state[:2], pos, rtol=0, atol=1e-9)
    np.testing.assert_allclose(state[5:], vel, rtol=0, atol=1e-9)
    assert state[0] > 100 and state[1] < 100  # moved towards the target
    np.testing.assert_array_equal(state[2:5], FREE_STATE[2:5])  # untouched block stays put


def test_agent_converges_to_a_target(env: PushTEnv) -> None:
    reset(env, FREE_STATE)
    target = np.array([350.0, 150.0])
    for _ in range(30):
        state = env.step((target - env.get_state()[:2]) / 100)[4]["state"]
    assert np.linalg.norm(state[:2] - target) < 1.0
    assert np.linalg.norm(state[5:]) < 5.0


def test_pushing_moves_the_block_only_while_in_contact(env: PushTEnv) -> None:
    # Bar spans x 196..316, y 300..330 at angle 0; the agent comes from the left at the bar's height.
    reset(env, [150.0, 315.0, 256.0, 300.0, 0.0, 0.0, 0.0])
    for _ in range(8):
        state = env.step(np.array([0.3, 0.0]))[4]["state"]
    assert state[2] > 256 + 20, "the block should be pushed right"
    bar = t_polygons(*state[2:5])[0]
    assert point_polygon_distance(state[:2], bar) > 12, "the agent (r = 15) must not sink into the bar"
    # Back off: with space damping 0 the block stops as soon as contact ends.
    env.step(np.array([-0.5, 0.0]))
    parked = env.step(np.array([-0.5, 0.0]))[4]["state"]
    after = env.step(np.array([0.0, -0.5]))[4]["state"]
    np.testing.assert_array_equal(after[2:5], parked[2:5])


def test_velocity_is_in_state_and_proprio(env: PushTEnv) -> None:
    reset(env, FREE_STATE)
    obs, _, _, _, info = env.step(np.array([0.3, 0.4]))
    state = info["state"]
    assert np.all(np.abs(state[5:]) > 1)
    np.testing.assert_allclose(obs["proprio"], state[[0, 1, 5, 6]].astype(np.float32))
    no_vel = PushTEnv(img_size=64, with_velocity=False)
    state5 = reset(no_vel, FREE_STATE[:5])
    assert state5.shape == (5,) and no_vel.get_proprio().shape == (2,)


def test_success_and_distance_known_cases() -> None:
    env = PushTEnv(img_size=64)
    goal = np.array([200.0, 200.0, 300.0, 300.0, 0.1, 0.0, 0.0])
    same = env.eval_state(goal, goal)
    assert same["success"] and same["distance"] == 0 and same["coverage"] == pytest.approx(1.0)
    assert env.eval_state(goal, goal + [19, 0, 0, 0, 0, 0, 0])["success"]
    assert not env.eval_state(goal, goal + [15, 0, 15, 0, 0, 0, 0])["success"]  # ||(15, 15)|| > 20
    # The angle test wraps: 0.1 vs 2 pi - 0.1 is 0.2 rad apart.
    wrapped = env.eval_state(goal, goal + [0, 0, 0, 0, 2 * math.pi - 0.2, 0, 0])
    assert wrapped["success"] and wrapped["angle_diff"] == pytest.approx(0.2)
    assert not env.eval_state(goal, goal + [0, 0, 0, 0, math.pi / 9 + 0.01, 0, 0])["success"]
    # distance is the reference's full-state L2, velocities included.
    assert env.eval_state(goal, goal + [3, 0, 0, 0, 0, 0, 4])["distance"] == pytest.approx(5.0)


def test_coverage_and_reward() -> None:
    # Shifting an upright T by 10 px along x: bar overlap 110 x 30, stem overlap 20 x 90.
    assert coverage(np.array([10.0, 0, 0]), np.zeros(3)) == pytest.approx((110 * 30 + 20 * 90) / 6300)
    # Against a rasterized estimate for an arbitrary pair of poses.
    a, b = np.array([250.0, 260.0, 0.9]), np.array([256.0, 256.0, math.pi / 4])
    ys, xs = np.mgrid[100:420:0.5, 100:420:0.5]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)

    def inside(pose: np.ndarray) -> np.ndarray:
        c, s = math.cos(pose[2]), math.sin(pose[2])
        local = (pts - pose[:2]) @ np.array([[c, -s], [s, c]])  # world -> body frame
        bar = (np.abs(local[:, 0]) <= 60) & (local[:, 1] >= 0) & (local[:, 1] <= 30)
        stem = (np.abs(local[:, 0]) <= 15) & (local[:, 1] >= 30) & (local[:, 1] <= 120)
        return bar | stem

    estimate = (inside(a) & inside(b)).sum() / inside(b).sum()
    assert coverage(a, b) == pytest.approx(estimate, abs=0.01)
    env = PushTEnv(img_size=64)
    assert env.reward(np.array([0, 0, *GOAL_POSE, 0, 0])) == 1.0
    assert env.reward(np.array([100.0, 100.0, 400.0, 100.0, 0.0, 0.0, 0.0])) == 0.0
    half = env.reward(np.array([0, 0, GOAL_POSE[0] + 30, GOAL_POSE[1], GOAL_POSE[2], 0, 0]))
    assert 0 < half < 1


def test_sample_init_goal_ranges_and_uniform_angles(env: PushTEnv) -> None:
    init, goal = env.sample_init_goal(7)
    np.testing.assert_array_equal(init, env.sample_init_goal(7)[0])
    assert not np.array_equal(init, goal)
    states = np.array([s for seed in range(200) for s in env.sample_init_goal(seed)])
    assert np.all((states[:, :2] >= 50) & (states[:, :2] < 450))
    assert np.all((states[:, 2:4] >= 100) & (states[:, 2:4] < 400))
    np.testing.assert_array_equal(states[:, :4], np.round(states[:, :4]))
    np.testing.assert_array_equal(states[:, 5:], 0)
    # Bug 8 fixed: angles uniform on the circle (the reference's randn * 2 pi - pi is not).
    counts = np.histogram(states[:, 4], bins=4, range=(0, 2 * math.pi))[0]
    assert np.all(counts > 70) and np.all(counts < 130)


def test_frames_vary_with_state_and_show_the_scene() -> None:
    env = PushTEnv(img_size=64)
    frame = env.reset(options={"state": FREE_STATE})[0]["visual"]
    assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
    assert frame.std() > 10
    ax, ay = (FREE_STATE[:2] * 64 / 512).astype(int)
    r, g, b = frame[ay, ax].astype(int)
    assert b > 200 and b > r + 100, "agent should be blue"
    gx, gy = (np.array(GOAL_POSE[:2]) * 64 / 512).astype(int)
    r, g, b = frame[gy + 2, gx].astype(int)
    assert g > r + 50 and g > b + 50, "goal T should be green"
    moved_block = env.reset(options={"state": FREE_STATE + [0, 0, 40, 0, 0, 0, 0]})[0]["visual"]
    moved_agent = env.reset(options={"state": FREE_STATE + [60, 0, 0, 0, 0, 0, 0]})[0]["visual"]
    assert not np.array_equal(frame, moved_block) and not np.array_equal(frame, moved_agent)
    rotated = env.reset(options={"state": FREE_STATE + [0, 0, 0, 0, 0.5, 0, 0]})[0]["visual"]
    assert not np.array_equal(frame, rotated)
    no_target = PushTEnv(img_size=64, with_target=False)
    plain = no_target.reset(options={"state": FREE_STATE})[0]["visual"]
    r, g, b = plain[gy + 2, gx].astype(int)
    assert r == g == b == 255


def test_t_polygons_match_the_reference_layout() -> None:
    bar, stem = t_polygons(256.0, 300.0, 0.0)
    np.testing.assert_array_equal(bar.min(axis=0), [196, 300])
    np.testing.assert_array_equal(stem.max(axis=0), [271, 420])


def test_only_the_t_shape_is_supported(env: PushTEnv) -> None:
    assert env.env_params == {"shape": "T"}
    env.reset(options={"env_params": {"shape": "T"}})
    with pytest.raises(ValueError, match="only shape 'T'"):
        env.set_env_params({"shape": "L"})
    with pytest.raises(ValueError, match="only shape 'T'"):
        PushTEnv(img_size=64, shape="I")

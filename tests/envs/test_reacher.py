"""Reacher (dm_control-equivalent two-link arm): gym API, exact replay, kinematics, success and rendering."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dinowm_core.envs  # noqa: F401  (registers the ids)
from dinowm_core.envs.mujoco_render import mujoco
from dinowm_core.envs.reacher import ReacherEnv, fingertip_position

WRIST_LIMIT = np.deg2rad(160.0)
#: visible half-width of the arena at the target's height: camera 0.75 up, fovy 45 deg, target at z 0.01
HALF_VIEW = 0.74 * np.tan(np.deg2rad(22.5))


@pytest.fixture(scope="module")
def env() -> Iterator[ReacherEnv]:
    env = ReacherEnv(img_size=64)
    yield env
    env.close()


def red_centroid(frame: np.ndarray) -> np.ndarray:
    """(row, col) centroid of the target sphere (rgba .6 .3 .3; the arm's oranges have green > blue)."""
    rgb = frame.astype(int)
    mask = (rgb[..., 0] > rgb[..., 1] + 50) & (np.abs(rgb[..., 1] - rgb[..., 2]) < 20)
    assert mask.sum() > 0, "target not visible"
    return np.argwhere(mask).mean(axis=0)


def test_gymnasium_env_checker_passes() -> None:
    env = gym.make("dinowm/Reacher-v0", img_size=64).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # base.py's proprio Box is unbounded on purpose; the checker only warns about it.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is")
        check_env(env)
    env.close()


def test_spaces_and_state_layout(env: ReacherEnv) -> None:
    state = np.array([0.3, -1.0, 0.5, -0.25, 0.1, -0.05])
    obs, info = env.reset(options={"state": state})
    np.testing.assert_array_equal(info["state"], state)
    np.testing.assert_array_equal(obs["proprio"], state[:4].astype(np.float32))
    assert env.state_dim == 6 and env.proprio_dim == 4 and env.action_dim == 2


def test_rollout_replays_bit_exactly(env: ReacherEnv) -> None:
    init = np.array([0.5, 2.6, 0.0, 3.0, 0.1, -0.1])  # wrist driven into its limit: a constraint is active
    actions = np.random.default_rng(11).uniform(-1, 1, (80, 2))
    actions[:40, 1] = np.abs(actions[:40, 1])
    obs_a, states_a = env.rollout(init, actions)
    env.rollout(np.array([2.0, 2.7, 5.0, -5.0, -0.1, 0.1]), actions[::-1])  # leave other state behind
    obs_b, states_b = env.rollout(init, actions)
    assert states_a.shape == (81, 6) and obs_a["visual"].shape == (81, 64, 64, 3)
    np.testing.assert_array_equal(states_a, states_b)
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])
    # Markov state (no solver warm start): resuming mid-way continues exactly, joint limits included.
    assert states_a[:40, 1].max() > WRIST_LIMIT
    _, resumed = env.rollout(states_a[20], actions[20:])
    np.testing.assert_array_equal(resumed, states_a[20:])
    # Each frame shows the state returned with it.
    np.testing.assert_array_equal(
        env.reset(options={"state": states_a[-1]})[0]["visual"], obs_a["visual"][-1]
    )


def test_joint_limit_is_enforced(env: ReacherEnv) -> None:
    _, states = env.rollout(np.array([0.0, 2.5, 0.0, 0.0, 0.1, 0.1]), np.array([[0.0, 1.0]] * 100))
    # MuJoCo limits are soft: full torque holds the wrist ~0.08 rad past 160 deg (as in dm_control).
    assert states[:, 1].max() < WRIST_LIMIT + 0.15
    assert states[-1, 1] > WRIST_LIMIT - 0.05  # it got pushed all the way to the limit
    _, free = env.rollout(np.array([0.0, 0.0, 0.0, 0.0, 0.1, 0.1]), np.array([[1.0, 0.0]] * 100))
    assert free[-1, 0] > WRIST_LIMIT + 1.0  # the shoulder has no limit


def test_torques_move_the_arm_and_are_clipped(env: ReacherEnv) -> None:
    start = np.array([0.0, 0.0, 0.0, 0.0, 0.1, 0.1])
    _, pushed = env.rollout(start, np.array([[1.0, 0.0]] * 10))
    assert pushed[-1, 0] > 0.1 and pushed[-1, 2] > 0  # positive torque turns the shoulder counter-clockwise
    _, big = env.rollout(start, np.array([[4.0, -9.0]] * 10))
    _, unit = env.rollout(start, np.array([[1.0, -1.0]] * 10))
    np.testing.assert_array_equal(big, unit)
    np.testing.assert_array_equal(big[:, 4:], np.tile(start[4:], (11, 1)))  # the target does not move


def test_fingertip_kinematics_match_simulation(env: ReacherEnv) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        state = np.array([*rng.uniform(-np.pi, np.pi, 2), 0.0, 0.0, 0.0, 0.0])
        env._set_state(state)
        np.testing.assert_allclose(env.fingertip, fingertip_position(state[:2]), atol=1e-12)
    np.testing.assert_allclose(fingertip_position(np.array([0.0, 0.0])), [0.24, 0.0])
    np.testing.assert_allclose(
        fingertip_position(np.array([np.pi / 2, -np.pi / 2])), [0.12, 0.12], atol=1e-15
    )


def _arm(q1: float, q2: float, target: tuple[float, float] = (0.1, 0.1)) -> np.ndarray:
    return np.array([q1, q2, 0.0, 0.0, *target])


@pytest.mark.parametrize(
    ("goal", "cur", "success", "distance"),
    [
        (_arm(0.3, 0.5), _arm(0.3, 0.5, target=(-0.2, 0.0)), True, 0.0),  # target and velocity ignored
        (_arm(0.0, 0.0), _arm(0.2, 0.0), True, 0.48 * np.sin(0.1)),  # chord of 0.2 rad at r 0.24: 0.048
        (_arm(0.0, 0.0), _arm(0.25, 0.0), False, 0.48 * np.sin(0.125)),  # 0.060
        (_arm(0.0, 0.0), _arm(np.pi, 0.0), False, 0.48),
        (_arm(0.0, 0.0), _arm(2 * np.pi, 0.0), True, 0.0),  # angles wrap
    ],
)
def test_eval_state_compares_fingertips(
    env: ReacherEnv, goal: np.ndarray, cur: np.ndarray, success: bool, distance: float
) -> None:
    result = env.eval_state(goal, cur)
    assert result["success"] is success
    assert result["distance"] == pytest.approx(distance, abs=1e-9)


def test_success_threshold_is_configurable() -> None:
    strict = ReacherEnv(img_size=16, success_threshold=0.015)
    assert not strict.eval_state(_arm(0.0, 0.0), _arm(0.2, 0.0))["success"]
    with pytest.raises(ValueError):
        ReacherEnv(img_size=16, target_size=0.0)


def test_reward_is_dm_control_sparse_reach(env: ReacherEnv) -> None:
    tip = fingertip_position(np.array([0.4, 0.9]))
    assert env.reward(_arm(0.4, 0.9, target=tuple(tip + [0.059, 0.0]))) == 1.0  # within 0.05 + 0.01
    assert env.reward(_arm(0.4, 0.9, target=tuple(tip + [0.061, 0.0]))) == 0.0


def test_sample_init_goal(env: ReacherEnv) -> None:
    pairs = [env.sample_init_goal(seed) for seed in range(100)]
    for init, goal in pairs:
        assert init.shape == goal.shape == (6,)
        np.testing.assert_array_equal(init[4:], goal[4:])  # one target per episode
        assert np.all(init[2:4] == 0) and np.all(goal[2:4] == 0)  # at rest, as dm_control starts
        for state in (init, goal):
            assert -np.pi <= state[0] <= np.pi and abs(state[1]) <= WRIST_LIMIT
            assert 0.05 <= np.linalg.norm(state[4:]) <= 0.20
    again = env.sample_init_goal(42)
    np.testing.assert_array_equal(again[0], pairs[42][0])
    np.testing.assert_array_equal(again[1], pairs[42][1])
    assert not np.array_equal(pairs[0][0], pairs[1][0])
    successes = [env.eval_state(goal, init)["success"] for init, goal in pairs]
    assert sum(successes) < 20  # most pairs need planning


def test_frames_vary_with_state_and_show_the_target(env: ReacherEnv) -> None:
    frames = []
    for target in [(0.15, 0.0), (0.0, 0.15)]:
        obs, _ = env.reset(options={"state": _arm(np.pi, 0.0, target=target)})  # arm points away (-x)
        frame = obs["visual"]
        assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
        assert frame.mean() > 5 and frame.std() > 1
        # Top-down, image right = +x, image up = +y.
        row, col = red_centroid(frame)
        expected_col = (target[0] / HALF_VIEW + 1) / 2 * 64 - 0.5
        expected_row = (1 - target[1] / HALF_VIEW) / 2 * 64 - 0.5
        assert abs(col - expected_col) < 1.0 and abs(row - expected_row) < 1.0
        frames.append(frame)
    bent = env.reset(options={"state": _arm(np.pi, 1.5, target=(0.0, 0.15))})[0]["visual"]
    assert not np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[1], bent)  # moving only the arm changes the frame too


def test_two_envs_in_one_process_both_render() -> None:
    """The black-frame trap: a second GL context must not blank the first one's frames."""
    env_a, env_b = ReacherEnv(img_size=64), ReacherEnv(img_size=32)
    try:
        state = _arm(0.5, -0.5)
        first_a = env_a.reset(options={"state": state})[0]["visual"]
        frame_b = env_b.reset(options={"state": state})[0]["visual"]
        again_a = env_a.render()
        for frame in (first_a, frame_b, again_a):
            assert frame.mean() > 5 and frame.std() > 1
        np.testing.assert_array_equal(first_a, again_a)
    finally:
        env_a.close()
        env_b.close()


def test_model_parameters_match_dm_control(env: ReacherEnv) -> None:
    model = env.model
    assert model.opt.timestep == 0.02
    assert model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CONTACT
    np.testing.assert_array_equal(model.dof_damping, [0.01, 0.01])
    np.testing.assert_array_equal(model.actuator_gear[:, 0], [0.05, 0.05])
    np.testing.assert_allclose(model.jnt_range[model.joint("wrist").id], [-WRIST_LIMIT, WRIST_LIMIT])
    assert not model.jnt_limited[model.joint("shoulder").id]
    assert model.geom("target").size[0] == 0.05

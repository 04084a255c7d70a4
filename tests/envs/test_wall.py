"""Wall (reference section 6.4): gym API, exact replay, hand-computed collisions, sampler, success, frames."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dinowm_core.envs  # noqa: F401  (registers the ids)
from dinowm_core.envs.wall import WallEnv, render_world, resize_frame, wall_mask


@pytest.fixture
def env() -> WallEnv:
    return WallEnv(img_size=64)


def walk(env: WallEnv, start: tuple[float, float], action: tuple[float, float], n: int) -> np.ndarray:
    """States after each of ``n`` repetitions of ``action`` from ``start``, shape (n, 2)."""
    _, states = env.rollout(np.array(start), np.tile(action, (n, 1)))
    return states[1:]


def red_centroid(frame: np.ndarray) -> np.ndarray:
    """(row, col) intensity-weighted centroid of the red dot (R high, G and B reduced)."""
    rgb = frame.astype(float)
    weight = np.clip(rgb[..., 0] - rgb[..., 1], 0, None)
    assert weight.sum() > 0, "dot not visible"
    rows, cols = np.indices(weight.shape)
    return np.array([(rows * weight).sum(), (cols * weight).sum()]) / weight.sum()


def test_gymnasium_env_checker_passes() -> None:
    env = gym.make("dinowm/Wall-v0", img_size=64).unwrapped
    assert isinstance(env, WallEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=False)


def test_rollout_replays_recorded_states_exactly(env: WallEnv) -> None:
    init, _ = env.sample_init_goal(3)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(60, 2))
    obs_a, states_a = env.rollout(init, actions)
    obs_b, states_b = WallEnv(img_size=64).rollout(init, actions)
    assert states_a.shape == (61, 2) and obs_a["visual"].shape == (61, 64, 64, 3)
    np.testing.assert_array_equal(states_a, states_b)
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])
    np.testing.assert_array_equal(obs_a["proprio"], states_a.astype(np.float32))
    # Replaying from any recorded state reproduces the rest of the recording.
    _, tail = env.rollout(states_a[20], actions[20:])
    np.testing.assert_array_equal(tail, states_a[20:])


def test_free_move_is_pos_plus_twice_action(env: WallEnv) -> None:
    np.testing.assert_array_equal(walk(env, (10.0, 10.0), (0.5, 0.25), 1)[0], [11.0, 10.5])


def test_dot_passes_through_the_door(env: WallEnv) -> None:
    # Door rows 26..34 at the default door_y 30; the wall spans columns 29..35.
    states = walk(env, (25.0, 30.0), (1.0, 0.0), 8)
    np.testing.assert_array_equal(states[:, 1], 30.0)
    np.testing.assert_array_equal(states[:, 0], np.arange(27.0, 42.0, 2.0))


@pytest.mark.parametrize(
    ("start", "action", "expected"),
    [
        # Left of the wall: stops 0.5 px before the face at x = 29 (the reference also shifts +0.5 along it).
        ((20.0, 10.0), (1.0, 0.0), (28.5, 10.5)),
        # Right of the wall: face at x = 35.
        ((44.0, 50.0), (-1.0, 0.0), (35.5, 50.5)),
    ],
)
def test_wall_hit_stops_half_a_pixel_before_the_face(
    env: WallEnv, start: tuple, action: tuple, expected: tuple
) -> None:
    states = walk(env, start, action, 8)
    np.testing.assert_allclose(states[4], expected, rtol=0, atol=1e-12)
    # Pushing on never gets the dot into the wall.
    assert np.all(states[:, 0] <= 28.5) if action[0] > 0 else np.all(states[:, 0] >= 35.5)


def test_leaving_the_door_into_the_wall_stops_inside_the_door(env: WallEnv) -> None:
    # From (30, 33) to (31, 35) crosses the door's edge row 34 at x = 30.5, inside the wall's columns.
    np.testing.assert_allclose(walk(env, (30.0, 33.0), (0.5, 1.0), 1)[0], [31.0, 33.5], atol=1e-12)


def test_border_hit_and_clamp_with_nudge(env: WallEnv) -> None:
    np.testing.assert_allclose(walk(env, (6.0, 30.0), (-1.0, 0.0), 1)[0], [4.5, 30.5], atol=1e-12)
    # Hitting the left border next to the bottom one: y + 0.5 = 60.3 is clamped to 60, then nudged to 59.7.
    np.testing.assert_allclose(walk(env, (6.0, 59.8), (-1.5, 0.0), 1)[0], [4.5, 59.7], atol=1e-12)
    # A purely vertical move into the border (the reference's slope form gave NaN here).
    np.testing.assert_allclose(walk(env, (10.0, 6.0), (0.0, -1.5), 1)[0], [10.5, 4.5], atol=1e-12)


def test_random_walk_never_enters_a_wall(env: WallEnv) -> None:
    actions = np.random.default_rng(1).uniform(-1, 1, size=(3000, 2))
    _, states = env.rollout(np.array([10.0, 10.0]), actions)
    x, y = states[:, 0], states[:, 1]
    assert np.all((x > 4) & (x < 60) & (y > 4) & (y < 60))
    in_wall_columns = (x >= 29) & (x <= 35)
    assert np.all(~in_wall_columns | ((y >= 26) & (y <= 34)))
    assert np.any(x < 29) and np.any(x > 35), "the walk should cross the door at least once"


def test_sample_init_goal_opposite_sides_and_deterministic(env: WallEnv) -> None:
    swapped = 0
    for seed in range(40):
        init, goal = env.sample_init_goal(seed)
        np.testing.assert_array_equal(init, env.sample_init_goal(seed)[0])
        left, right = sorted((init, goal), key=lambda s: s[0])
        assert 7.4 <= left[0] <= 32 - 3 - 3.4 and 32 + 3 + 3.4 <= right[0] <= 56.6
        assert all(7.4 <= s[1] <= 56.6 for s in (init, goal))
        swapped += init[0] > goal[0]
    assert 5 < swapped < 35, "start and goal should swap sides about half of the time"
    assert not np.array_equal(env.sample_init_goal(0)[0], env.sample_init_goal(1)[0])


def test_sample_init_goal_follows_the_current_wall(env: WallEnv) -> None:
    # Reference bug 10: the sampler kept the wall x of construction time after update_env.
    env.set_env_params({"wall_x": 20, "door_y": 45})
    for seed in range(20):
        xs = sorted(s[0] for s in env.sample_init_goal(seed))
        assert xs[0] <= 20 - 3 - 3.4 and xs[1] >= 20 + 3 + 3.4


def test_env_params_change_walls_dynamics_and_frames(env: WallEnv) -> None:
    frame_default = env.render()
    obs, _ = env.reset(options={"state": env.get_state(), "env_params": {"wall_x": 20, "door_y": 45}})
    assert env.env_params == {"wall_x": 20, "door_y": 45}
    assert not np.array_equal(obs["visual"], frame_default)
    assert walk(env, (10.0, 10.0), (1.0, 0.0), 5)[-1][0] == 16.5  # the new wall face is at x = 17
    # rollout(env_params=...) restores a layout for replay.
    _, states = env.rollout(np.array([10.0, 10.0]), np.tile((1.0, 0.0), (5, 1)), env_params={"wall_x": 32})
    assert states[-1][0] == 20.0
    # At 65 px the frame is the world grid itself: the wall now covers columns 17..23 outside rows 41..49.
    world = WallEnv(img_size=65, wall_x=20, door_y=45).render()
    np.testing.assert_array_equal(world[10, 17:24], 0)
    np.testing.assert_array_equal(world[45, 17:24], 255)
    assert world[10, 26:29].min() == 255  # the default wall's columns are free now
    with pytest.raises(ValueError, match="door_y"):
        env.set_env_params({"door_y": 2.5})
    with pytest.raises(ValueError, match="wall_x"):
        env.set_env_params({"wall_x": 60})
    with pytest.raises(ValueError, match="unknown"):
        env.set_env_params({"wall": 3})


def test_success_and_distance() -> None:
    env = WallEnv(img_size=64)
    goal = np.array([40.0, 20.0])
    near = env.eval_state(goal, np.array([40.0 + 4.4, 20.0]))
    far = env.eval_state(goal, np.array([40.0 + 3.0, 20.0 + 4.0]))
    assert near["success"] and near["distance"] == pytest.approx(4.4)
    assert not far["success"] and far["distance"] == pytest.approx(5.0)


def test_world_frame_pixels() -> None:
    frame = render_world(np.array([12.0, 40.0]), wall_mask(32, 30))
    assert frame.shape == (65, 65, 3)
    np.testing.assert_array_equal(frame[40, 12], [255, 0, 0])  # dot peak (row = y, column = x)
    np.testing.assert_array_equal(frame[10, 29], [0, 0, 0])  # wall column 29, above the door
    np.testing.assert_array_equal(frame[30, 32], [255, 255, 255])  # in the door
    np.testing.assert_array_equal(frame[20, 4], [0, 0, 0])  # border column
    np.testing.assert_array_equal(frame[60, 20], [0, 0, 0])  # border row
    np.testing.assert_array_equal(frame[20, 20], [255, 255, 255])


@pytest.mark.parametrize("size", [64, 224])
def test_frames_vary_with_state_and_track_the_dot(size: int) -> None:
    env = WallEnv(img_size=size)
    frames = {}
    for pos in [(12.0, 40.0), (50.0, 15.0)]:
        obs, _ = env.reset(options={"state": np.array(pos)})
        frame = obs["visual"]
        assert frame.dtype == np.uint8 and frame.shape == (size, size, 3)
        assert frame.min() == 0 and frame.max() == 255
        # The dot's centre lands where the 65 px world maps to (pixel centres scale by size / 65).
        expected = (np.array(pos[::-1]) + 0.5) * size / 65 - 0.5
        np.testing.assert_allclose(red_centroid(frame), expected, atol=0.05 * size)
        frames[pos] = frame
    assert not np.array_equal(*frames.values())


@pytest.mark.parametrize("size", [32, 64, 224])
def test_resize_matches_torchvision_antialiased_bilinear(size: int) -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    frame = render_world(np.array([20.3, 40.7]), wall_mask(32, 30))
    ref = F.interpolate(
        torch.from_numpy(frame).permute(2, 0, 1)[None].double(),
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0].permute(1, 2, 0)
    ours = resize_frame(frame, size).astype(float)
    assert np.abs(ours - ref.numpy()).max() <= 0.5 + 1e-3  # only the final rounding to uint8 differs
    # The env's fast path (resized background + resized dot window) agrees with the full resize.
    env = WallEnv(img_size=size)
    env.reset(options={"state": np.array([20.3, 40.7])})
    assert np.abs(env.render().astype(int) - ours).max() <= 1

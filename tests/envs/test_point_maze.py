"""PointMaze (reference section 6.3): gym API, exact replay, walls, sampler region, success and rendering."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dinowm_core.envs  # noqa: F401  (registers the ids)
from dinowm_core.envs.mujoco_render import mujoco
from dinowm_core.envs.point_maze import U_MAZE, PointMazeEnv, in_sampler_region

RADIUS = 0.1
ORIGIN = 1.2  # world position of the particle body: state (x, y) = world - 1.2


def wall_clearance(x: float, y: float) -> float:
    """Distance from the ball centre (state coords) to the nearest wall box, from the layout alone."""
    best = np.inf
    for w, row in enumerate(U_MAZE):
        for h, tile in enumerate(row):
            if tile != "#":
                continue
            cx, cy = w + 1.0 - ORIGIN, h + 1.0 - ORIGIN
            dx, dy = max(abs(x - cx) - 0.5, 0.0), max(abs(y - cy) - 0.5, 0.0)
            best = min(best, float(np.hypot(dx, dy)))
    return best


def wall_penetration(env: PointMazeEnv) -> float:
    """Deepest particle-wall contact distance MuJoCo reports (negative = overlap; +inf without contact)."""
    particle = env.model.geom("particle_geom").id
    deepest = np.inf
    for contact in env.data.contact[: env.data.ncon]:
        pair = {contact.geom1, contact.geom2}
        if particle in pair and all(env.model.geom(g).name.startswith("wall") for g in pair - {particle}):
            deepest = min(deepest, contact.dist)
    return deepest


def particle_centroid(frame: np.ndarray) -> np.ndarray:
    """(row, col) centroid of the green particle site (rgba 0.3 0.6 0.3) in an RGB frame."""
    rgb = frame.astype(int)
    mask = (rgb[..., 1] > rgb[..., 0] + 40) & (rgb[..., 1] > rgb[..., 2] + 40)
    assert mask.sum() > 0, "particle not visible"
    return np.argwhere(mask).mean(axis=0)


@pytest.fixture(scope="module")
def env() -> Iterator[PointMazeEnv]:
    env = PointMazeEnv(img_size=64)
    yield env
    env.close()


def test_gymnasium_env_checker_passes() -> None:
    env = gym.make("dinowm/PointMaze-v0", img_size=64).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # base.py's proprio Box is unbounded on purpose; the checker only warns about it.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is")
        check_env(env)
    env.close()


def test_rollout_replays_bit_exactly(env: PointMazeEnv) -> None:
    init, _ = env.sample_init_goal(3)
    actions = np.random.default_rng(3).uniform(-1.5, 1.5, (60, 2))
    obs_a, states_a = env.rollout(init, actions)
    env.rollout(np.array([2.8, 0.6, -5.0, 5.0]), actions[::-1])  # leave other state behind
    obs_b, states_b = env.rollout(init, actions)
    assert states_a.shape == (61, 4) and obs_a["visual"].shape == (61, 64, 64, 3)
    np.testing.assert_array_equal(states_a[0], init)
    np.testing.assert_array_equal(states_a, states_b)
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])
    np.testing.assert_array_equal(obs_a["proprio"], states_a.astype(np.float32))
    # The state is Markov: resuming from a recorded middle state continues the same trajectory exactly.
    _, resumed = env.rollout(states_a[25], actions[25:])
    np.testing.assert_array_equal(resumed, states_a[25:])
    # Each frame shows the state returned with it.
    np.testing.assert_array_equal(
        env.reset(options={"state": states_a[-1]})[0]["visual"], obs_a["visual"][-1]
    )


def test_actions_are_clipped(env: PointMazeEnv) -> None:
    start = np.array([0.8, 1.5, 0.0, 0.0])
    _, big = env.rollout(start, np.array([[7.0, -3.0]] * 3))
    np.testing.assert_array_equal(env.data.ctrl, [1.0, -1.0])
    _, unit = env.rollout(start, np.array([[1.0, -1.0]] * 3))
    np.testing.assert_array_equal(big, unit)


def test_velocity_is_clipped_before_simulating(env: PointMazeEnv) -> None:
    # D4RL clips qvel to +-5 once per step, before the substeps: a state at 50 moves like one at 5.
    _, fast = env.rollout(np.array([0.8, 1.5, 0.0, 50.0]), np.zeros((1, 2)))
    _, five = env.rollout(np.array([0.8, 1.5, 0.0, 5.0]), np.zeros((1, 2)))
    np.testing.assert_array_equal(fast[1], five[1])
    assert 0.0 < fast[1, 3] < 5.0  # damping slows it further within the step


@pytest.mark.parametrize(
    ("start", "push"),
    [
        ((0.8, 1.5, 5.0, 0.0), (1.0, 0.0)),  # left arm into the central wall
        ((2.8, 1.5, -5.0, 0.0), (-1.0, 0.0)),  # right arm into the central wall
        ((0.8, 0.8, 0.0, -5.0), (0.0, -1.0)),  # outer wall below
        ((1.8, 2.8, 0.0, 5.0), (0.0, 1.0)),  # corridor into the outer wall above
        ((1.8, 2.8, 0.0, -5.0), (0.0, -1.0)),  # corridor into the central wall below
    ],
)
def test_cannot_pass_through_walls(env: PointMazeEnv, start: tuple, push: tuple) -> None:
    _, states = env.rollout(np.array(start), np.array([push] * 80))
    # Soft contacts let a full-speed ball sink a few hundredths of a unit into a wall, never through it.
    clearances = [wall_clearance(x, y) for x, y in states[:, :2]]
    assert min(clearances) > RADIUS - 0.05
    assert np.abs(states[-1, 2:]).max() < 0.5  # it came to rest against the wall


def test_random_actions_stay_in_free_space(env: PointMazeEnv) -> None:
    init, _ = env.sample_init_goal(0)
    actions = np.random.default_rng(0).uniform(-1, 1, (300, 2))
    _, states = env.rollout(init, actions)
    assert min(wall_clearance(x, y) for x, y in states[:, :2]) > RADIUS - 0.05
    assert np.ptp(states[:, 0]) > 0.3 or np.ptp(states[:, 1]) > 0.3  # it actually moved around


def test_mjcf_walls_match_layout_geometry(env: PointMazeEnv) -> None:
    """MuJoCo's collision geometry agrees with the layout: overlap iff the ball is within 0.1 of a wall box."""
    checked = 0
    for x in np.arange(0.2, 3.41, 0.05):
        for y in np.arange(0.2, 3.41, 0.05):
            clearance = wall_clearance(x, y)
            if abs(clearance - RADIUS) < 1e-3:
                continue  # exactly tangent: either answer is fine
            env._set_state(np.array([x, y, 0.0, 0.0]))  # no frame needed: collision detection only
            assert (wall_penetration(env) < 0) == (clearance < RADIUS), (x, y, clearance)
            checked += 1
    assert checked > 3500


def test_sampler_region_is_free_space() -> None:
    xs, ys = np.meshgrid(np.linspace(0.5, 3.1, 53), np.linspace(0.5, 3.1, 53))
    inside = [(x, y) for x, y in zip(xs.ravel(), ys.ravel(), strict=True) if in_sampler_region(x, y)]
    assert len(inside) > 1000
    # Every admissible position keeps the reference's 0.1 margin to the walls (not just no overlap).
    assert min(wall_clearance(x, y) for x, y in inside) >= RADIUS + 0.1 - 1e-9
    # The connecting wall between the arms is excluded.
    assert not in_sampler_region(1.8, 1.5) and in_sampler_region(1.8, 2.8)


def test_sample_init_goal_is_deterministic_and_in_u_region(env: PointMazeEnv) -> None:
    pairs = [env.sample_init_goal(seed) for seed in range(200)]
    for init, goal in pairs:
        for state in (init, goal):
            assert state.shape == (4,) and state.dtype == np.float64
            assert in_sampler_region(*state[:2])
            assert np.all(np.abs(state[2:]) <= 5.2262554)
    again = env.sample_init_goal(7)
    np.testing.assert_array_equal(again[0], pairs[7][0])
    np.testing.assert_array_equal(again[1], pairs[7][1])
    assert not np.array_equal(pairs[0][0], pairs[1][0])
    # Both arms and the corridor get samples.
    positions = np.array([s[:2] for pair in pairs for s in pair])
    assert (positions[:, 0] <= 1.1).any() and (positions[:, 0] >= 2.5).any()
    assert ((positions[:, 0] > 1.1) & (positions[:, 0] < 2.5)).any()


def test_plain_reset_is_seeded_and_valid(env: PointMazeEnv) -> None:
    _, info_a = env.reset(seed=5)
    _, info_b = env.reset(seed=5)
    np.testing.assert_array_equal(info_a["state"], info_b["state"])
    assert in_sampler_region(*info_a["state"][:2])


@pytest.mark.parametrize(
    ("goal", "cur", "success", "distance"),
    [
        ((1.0, 1.0, 0.0, 0.0), (1.0, 1.0, 3.0, -3.0), True, 0.0),  # velocity is ignored
        ((1.0, 1.0, 0.0, 0.0), (1.3, 1.39, 0.0, 0.0), True, np.hypot(0.3, 0.39)),  # 0.492
        ((1.0, 1.0, 0.0, 0.0), (1.3, 1.41, 0.0, 0.0), False, np.hypot(0.3, 0.41)),  # 0.508
        ((0.8, 0.8, 0.0, 0.0), (2.8, 0.8, 0.0, 0.0), False, 2.0),
    ],
)
def test_eval_state(env: PointMazeEnv, goal: tuple, cur: tuple, success: bool, distance: float) -> None:
    result = env.eval_state(np.array(goal), np.array(cur))
    assert result["success"] is success
    assert result["distance"] == pytest.approx(distance, abs=1e-6)


def test_frames_show_the_particle_where_it_is(env: PointMazeEnv) -> None:
    frames = {}
    for name, xy in {"origin": (0.8, 0.8), "right": (2.8, 0.8), "up": (0.8, 2.8)}.items():
        obs, _ = env.reset(options={"state": np.array([*xy, 0.0, 0.0])})
        frame = obs["visual"]
        assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
        assert frame.mean() > 5 and frame.std() > 1
        frames[name] = frame
    assert not np.array_equal(frames["origin"], frames["right"])
    origin, right, up = (particle_centroid(frames[k]) for k in ("origin", "right", "up"))
    # Top-down, image right = +x and image up = +y (the reference's azimuth 90 / elevation -90 view);
    # 2 units of motion is ~24 px at 64 px.
    assert right[1] - origin[1] > 15 and abs(right[0] - origin[0]) < 2
    assert origin[0] - up[0] > 15 and abs(up[1] - origin[1]) < 2


def test_two_envs_in_one_process_both_render() -> None:
    """The black-frame trap: a second GL context must not blank the first one's frames."""
    env_a, env_b = PointMazeEnv(img_size=64), PointMazeEnv(img_size=48)
    try:
        state = np.array([2.8, 2.8, 0.0, 0.0])
        first_a = env_a.reset(options={"state": state})[0]["visual"]
        frame_b = env_b.reset(options={"state": state})[0]["visual"]
        again_a = env_a.render()
        for frame in (first_a, frame_b, again_a):
            assert frame.mean() > 5 and frame.std() > 1
        assert frame_b.shape == (48, 48, 3)
        np.testing.assert_array_equal(first_a, again_a)
    finally:
        env_a.close()
        env_b.close()


def test_model_parameters_match_the_reference(env: PointMazeEnv) -> None:
    opt = env.model.opt
    assert opt.timestep == 0.01 and opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert np.all(opt.gravity == 0) and opt.iterations == 20
    np.testing.assert_array_equal(env.model.dof_damping, [1.0, 1.0])
    np.testing.assert_array_equal(env.model.actuator_gear[:, 0], [100.0, 100.0])
    np.testing.assert_array_equal(env.model.actuator_ctrlrange, [[-1.0, 1.0], [-1.0, 1.0]])
    assert env.model.geom("particle_geom").size[0] == 0.1 and env.model.site("particle_site").size[0] == 0.2
    assert env.model.geom("wall_0_0").friction[0] == 0.5
    assert sum(tile == "#" for row in U_MAZE for tile in row) == sum(
        env.model.geom(i).name.startswith("wall") for i in range(env.model.ngeom)
    )


@pytest.mark.parametrize("backend", ["egl", "osmesa", None])
def test_renders_with_either_gl_backend(backend: str | None) -> None:
    """A fresh process honours MUJOCO_GL, or picks EGL (OSMesa where EGL is missing) and renders frames."""
    code = (
        "import numpy as np\n"
        "from dinowm_core.envs import mujoco_render\n"
        "from dinowm_core.envs.point_maze import PointMazeEnv\n"
        "frame = PointMazeEnv(img_size=32).reset(options={'state': np.array([0.8, 0.8, 0.0, 0.0])})[0]['visual']\n"
        "print(mujoco_render.GL_BACKEND, frame.mean(), frame.std())\n"
    )
    # PYOPENGL_PLATFORM stays as this (EGL-rendering) process left it: the child must cope with it.
    env = {key: value for key, value in os.environ.items() if key != "MUJOCO_GL"}
    if backend is not None:
        env["MUJOCO_GL"] = backend
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Error" not in out.stderr  # no EGL/GL teardown errors at exit
    name, mean, std = out.stdout.split()
    assert name in ((backend,) if backend else ("egl", "osmesa"))
    assert float(mean) > 5 and float(std) > 1

"""Rope and granular pushing envs (MuJoCo stand-ins for DINO-WM's FleX scenes, reference section 6.5)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dinowm_core.envs  # noqa: F401  (registers the ids)
from dinowm_core.envs.deformable import GranularEnv, RopeEnv, chamfer_distance

# Fewer rope settle substeps keep the tests in seconds; granular runs its real defaults (fast since CG + sleep).
FAST_ROPE = {"settle_steps": 30, "init_settle_steps": 20}
FAST_GRANULAR: dict = {}


@pytest.fixture(scope="module")
def rope() -> Iterator[RopeEnv]:
    env = RopeEnv(img_size=64, **FAST_ROPE)
    yield env
    env.close()


@pytest.fixture(scope="module")
def granular() -> Iterator[GranularEnv]:
    env = GranularEnv(img_size=64, **FAST_GRANULAR)
    yield env
    env.close()


def straight_rope(env: RopeEnv) -> np.ndarray:
    """A straight rope along x through the origin, resting on the table, as a state (160,)."""
    rows = np.zeros((env.num_particles, 4))
    rows[:, 0] = np.linspace(-env.length / 2, env.length / 2, env.num_particles)
    rows[:, 1] = env.particle_radius
    rows[:, 3] = 1.0 / env.particle_mass
    return rows.ravel()


@pytest.mark.parametrize(
    ("env_id", "kwargs"), [("dinowm/Rope-v0", FAST_ROPE), ("dinowm/Granular-v0", FAST_GRANULAR)]
)
def test_gymnasium_env_checker(env_id: str, kwargs: dict) -> None:
    env = gym.make(env_id, img_size=64, disable_env_checker=True, **kwargs).unwrapped
    try:
        check_env(env, skip_render_check=False)
        assert env.observation_space["visual"].shape == (64, 64, 3)
        assert env.state_dim == {"dinowm/Rope-v0": 160, "dinowm/Granular-v0": 1200}[env_id]
        assert env.action_dim == 4 and env.proprio_dim == 1
    finally:
        env.close()


def test_reset_to_state_is_exact(rope: RopeEnv) -> None:
    init, _ = rope.sample_init_goal(3)
    obs, info = rope.reset(options={"state": init})
    assert np.array_equal(info["state"], init)  # bit-exact, not just close
    assert np.array_equal(obs["proprio"], np.zeros(1, np.float32))


def test_replay_is_bit_identical_and_markov(rope: RopeEnv) -> None:
    init, _ = rope.sample_init_goal(5)
    centre = init.reshape(-1, 4)[:, [0, 2]].mean(axis=0)
    actions = np.array(
        [
            [centre[0] - 1.0, centre[1] - 0.5, centre[0] + 0.5, centre[1] + 0.5],
            [centre[0] + 1.0, centre[1], centre[0] - 0.5, centre[1] - 0.2],
        ]
    )
    obs_a, states_a = rope.rollout(init, actions)
    obs_b, states_b = rope.rollout(init, actions)
    assert states_a.shape == (3, 160)
    assert np.array_equal(states_a, states_b)
    assert np.array_equal(obs_a["visual"], obs_b["visual"])
    assert not np.array_equal(states_a[1], states_a[0])
    # the state is the whole simulator state: restarting from s_1 reproduces s_2 exactly
    _, states_c = rope.rollout(states_a[1], actions[1:])
    assert np.array_equal(states_c[1], states_a[2])


def test_granular_replay_is_bit_identical(granular: GranularEnv) -> None:
    init, _ = granular.sample_init_goal(2)
    centre = init.reshape(-1, 4)[:, [0, 2]].mean(axis=0)
    actions = np.array(
        [
            [centre[0] - 1.2, centre[1], centre[0] + 0.3, centre[1] + 0.2],
            [centre[0] + 1.0, centre[1] - 0.3, centre[0] - 0.2, centre[1]],
        ]
    )
    _, states_a = granular.rollout(init, actions)
    _, states_b = granular.rollout(init, actions)
    assert np.array_equal(states_a, states_b)
    assert np.abs(states_a[1] - states_a[0]).max() > 0.3
    # Markov although grains sleep: every step ends awake from positions alone, as a reset does
    _, states_c = granular.rollout(states_a[1], actions[1:])
    assert np.array_equal(states_c[1], states_a[2])


def test_push_moves_the_rope_near_the_line_and_does_not_tunnel(rope: RopeEnv) -> None:
    start = straight_rope(rope)
    rope.reset(options={"state": start})
    # push across the middle of the rope, from y = -0.5 to y = +0.5 (state column 2 is table y)
    _, _, _, _, info = rope.step(np.array([0.0, -0.5, 0.0, 0.5]))
    rows = info["state"].reshape(-1, 4)
    middle, ends = rows[18:22], rows[[0, -1]]
    contact = (
        0.5 + rope.params.pusher_radius + rope.particle_radius
    )  # where the rope meets the stopped pusher
    assert np.all(middle[:, 2] > contact - 0.1)  # carried along: it neither tunnelled nor stayed behind
    assert np.all(middle[:, 2] < contact + 0.1)  # and not flung far past the pusher
    assert np.all(np.abs(ends[:, 2]) < 0.05)  # the ends are dragged inwards, not pushed forwards
    assert np.all(np.abs(rows[:, 1] - rope.particle_radius) < 0.01)  # still lying on the table


def test_push_moves_grains_near_the_line_only(granular: GranularEnv) -> None:
    init, _ = granular.sample_init_goal(0)
    rows = init.reshape(-1, 4)
    centre = rows[:, [0, 2]].mean(axis=0)
    x_line = centre[0] - 0.3
    granular.reset(options={"state": init})
    _, _, _, _, info = granular.step(np.array([x_line, centre[1] - 1.5, x_line, centre[1] + 1.5]))
    moved = np.linalg.norm(info["state"].reshape(-1, 4)[:, :3] - rows[:, :3], axis=1)
    offset = np.abs(rows[:, 0] - x_line)
    assert moved[offset < 0.1].mean() > 0.5
    assert moved[offset > 1.0].max() < 0.1


def test_chamfer_distance_values() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, b) == pytest.approx(chamfer_distance(b, a), rel=0, abs=1e-12)
    # x -> y: 1; y -> x: mean(1, 3) = 2; the reference sums the two directions
    x, y = np.array([[0.0, 0.0, 0.0, 9.0]]), np.array([[1.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 5.0]])
    assert chamfer_distance(x, y) == pytest.approx(3.0)  # column 3 (inv_mass) is ignored


@pytest.mark.parametrize("env_name", ["rope", "granular"])
def test_eval_state_success(env_name: str, rope: RopeEnv, granular: GranularEnv) -> None:
    env = {"rope": rope, "granular": granular}[env_name]
    init, goal = env.sample_init_goal(1)
    same = env.eval_state(init, init)
    assert same["success"] and same["chamfer_distance"] == 0.0 and same["distance"] == 0.0
    apart = env.eval_state(goal, init)
    assert not apart["success"] and apart["chamfer_distance"] > env.success_threshold
    assert apart["distance"] == apart["chamfer_distance"]
    shifted = init.reshape(-1, 4).copy()
    shifted[:, 0] += 0.02  # well under a particle radius: reached
    assert env.eval_state(init, shifted.ravel())["success"]


@pytest.mark.parametrize("env_name", ["rope", "granular"])
def test_frames_show_the_object_and_change_after_a_push(
    env_name: str, rope: RopeEnv, granular: GranularEnv
) -> None:
    env = {"rope": rope, "granular": granular}[env_name]
    init, _ = env.sample_init_goal(4)
    obs, _ = env.reset(options={"state": init})
    frame = obs["visual"]
    assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
    assert frame.std() > 5.0
    # the object is drawn in its own colour (rope orange: red channel dominant; grains blue)
    channel = 0 if env_name == "rope" else 2
    assert (frame[..., channel].astype(int) - frame.mean(axis=-1) > 40).sum() >= 3
    centre = init.reshape(-1, 4)[:, [0, 2]].mean(axis=0)
    obs, _, _, _, _ = env.step(np.array([centre[0] - 1.5, centre[1], centre[0] + 1.0, centre[1] + 0.5]))
    assert np.abs(obs["visual"].astype(int) - frame.astype(int)).sum() > 0


def test_two_envs_render_independently(rope: RopeEnv) -> None:
    reference = rope.render()
    other = GranularEnv(img_size=64, **FAST_GRANULAR)
    other.render()
    other.close()
    assert np.array_equal(rope.render(), reference)  # closing another env must not corrupt this one


@pytest.mark.parametrize("env_name", ["rope", "granular"])
def test_sample_init_goal(env_name: str, rope: RopeEnv, granular: GranularEnv) -> None:
    env = {"rope": rope, "granular": granular}[env_name]
    init, goal = env.sample_init_goal(7)
    init2, goal2 = env.sample_init_goal(7)
    assert np.array_equal(init, init2) and np.array_equal(goal, goal2)
    assert not np.array_equal(env.sample_init_goal(8)[0], init)
    assert init.shape == goal.shape == (env.state_dim,)
    a, b = init.reshape(-1, 4), goal.reshape(-1, 4)
    assert np.array_equal(a[:, [1, 3]], b[:, [1, 3]])  # heights and inv_mass untouched
    assert np.abs(b[:, [0, 2]]).max(axis=0).tolist() < [3.5, 4.5]  # inside the workspace
    spread_a, spread_b = a[:, [0, 2]].std(axis=0), b[:, [0, 2]].std(axis=0)
    if env_name == "rope":  # a rigid motion of the init: neighbour spacing is preserved
        gap = lambda r: np.linalg.norm(np.diff(r[:, [0, 2]], axis=0), axis=1)  # noqa: E731
        np.testing.assert_allclose(gap(b), gap(a), atol=1e-9)
        assert not np.allclose(a[:, [0, 2]], b[:, [0, 2]])
    else:  # a scaled-down copy of the pile
        ratio = spread_b / spread_a
        assert np.all((ratio > 0.59) & (ratio < 0.91))


def test_push_that_misses_the_pile_leaves_it_exactly_and_ends_settling_early(granular: GranularEnv) -> None:
    init, _ = granular.sample_init_goal(0)
    rows = init.reshape(-1, 4)
    assert rows[:, 1].max() > 3 * granular.particle_radius  # three layers of grains, not a flattened sheet
    y_far = -4.0 if rows[:, 2].min() > -2.0 else 4.0  # a line across the table, far from the pile
    granular.reset(options={"state": init})
    _, _, _, _, info = granular.step(np.array([-3.0, y_far, 3.0, y_far]))
    # the resting pile falls asleep within a few substeps: no creep of its soft contacts during the push
    assert np.abs(info["state"] - init).max() < 3e-3  # without sleeping: 0.014
    p = granular.params
    travel = math.ceil(6.0 / (p.push_speed * p.timestep))
    assert (
        info["substeps"]
        < travel + 2 * math.ceil(p.lift_height / (p.lower_speed * p.timestep)) + p.settle_steps
    )


def test_granular_pile_sleeps_only_when_at_rest(granular: GranularEnv) -> None:
    init, _ = granular.sample_init_goal(0)
    rows = init.reshape(-1, 4)
    centre = rows[:, [0, 2]].mean(axis=0)
    granular.reset(options={"state": init})
    # pushing through the pile wakes it: grains on the line move although the pile was asleep
    _, _, _, _, info = granular.step(np.array([centre[0], centre[1] - 1.5, centre[0], centre[1] + 1.5]))
    moved = np.linalg.norm(info["state"].reshape(-1, 4)[:, :3] - rows[:, :3], axis=1)
    assert moved.max() > 0.5

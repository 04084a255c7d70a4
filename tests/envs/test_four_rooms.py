"""four_rooms: gym API, reset-to-state, exact replay, dynamics, success, and a view that hides what is out of sight."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dinowm_core.envs  # noqa: F401  (registers the ids)
from dinowm_core.envs.four_rooms import FORWARD, LEFT, RIGHT, SIZE, FourRoomsEnv, room_of

pytest.importorskip("minigrid")

# A hand-made layout: doors at (8, 6), (8, 12), (4, 8), (12, 8); a box behind the wall x = 8 and a ball in front.
LAYOUT = {
    "doors": [[8, 6], [8, 12], [4, 8], [12, 8]],
    "objects": [["box", "red", 10, 3], ["ball", "green", 7, 3], ["key", "blue", 3, 12]],
}


@pytest.fixture
def env() -> FourRoomsEnv:
    env = FourRoomsEnv(img_size=64)
    env.reset(options={"state": np.array([5, 2, 0]), "env_params": LAYOUT})
    return env


def view_at(env: FourRoomsEnv, state: list[int], params: dict) -> np.ndarray:
    obs, _ = env.reset(options={"state": np.array(state, float), "env_params": params})
    return obs["visual"]


def recolour(params: dict, index: int, colour: str, kind: str | None = None) -> dict:
    objects = [list(o) for o in params["objects"]]
    objects[index][1] = colour
    if kind is not None:
        objects[index][0] = kind
    return {"doors": params["doors"], "objects": objects}


def test_gymnasium_env_checker_passes() -> None:
    env = gym.make("dinowm/FourRooms-v0", img_size=64).unwrapped
    assert isinstance(env, FourRoomsEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=False)


def test_partial_view_hides_an_object_behind_a_wall(env: FourRoomsEnv) -> None:
    # The agent at (5, 2) faces +x: its 7 x 7 view spans x 5..11; the wall x = 8 has no door in view.
    state = [5, 2, 0]
    before = view_at(env, state, LAYOUT)
    hidden = view_at(env, state, recolour(LAYOUT, 0, "purple", "key"))  # the box at (10, 3), behind the wall
    np.testing.assert_array_equal(before, hidden)
    seen = view_at(env, state, recolour(LAYOUT, 1, "purple"))  # the ball at (7, 3), in front of the wall
    assert not np.array_equal(before, seen)
    # The top-down render (videos only) does show the hidden object.
    full = env.render_full()
    env.reset(options={"state": np.array(state, float), "env_params": LAYOUT})
    assert not np.array_equal(full, env.render_full())
    # Walking through the door (8, 6) and looking back up brings the box into view.
    visible_from = [10, 6, 3]
    assert not np.array_equal(
        view_at(env, visible_from, LAYOUT), view_at(env, visible_from, recolour(LAYOUT, 0, "purple"))
    )


def test_frames_are_egocentric_and_not_constant(env: FourRoomsEnv) -> None:
    frames = [view_at(env, [5, 4, d], LAYOUT) for d in range(4)]
    for f in frames:
        assert f.shape == (64, 64, 3) and f.dtype == np.uint8 and f.std() > 0
    assert len({f.tobytes() for f in frames}) == 4
    assert FourRoomsEnv(img_size=32).reset(seed=0)[0]["visual"].shape == (32, 32, 3)


def test_reset_to_state_round_trip(env: FourRoomsEnv) -> None:
    actions = np.random.default_rng(0).integers(0, 3, size=(40, 1))
    obs, states = env.rollout(np.array([5.0, 2.0, 0.0]), actions, env_params=LAYOUT)
    other = FourRoomsEnv(img_size=64, layout_seed=7)
    for t in (0, 13, 40):
        o, info = other.reset(options={"state": states[t], "env_params": LAYOUT})
        np.testing.assert_array_equal(info["state"], states[t])
        np.testing.assert_array_equal(o["visual"], obs["visual"][t])
        np.testing.assert_array_equal(o["proprio"], obs["proprio"][t])
        assert other.env_params == LAYOUT


def test_rollout_replays_exactly(env: FourRoomsEnv) -> None:
    init, _ = env.sample_init_goal(3)
    actions = np.random.default_rng(1).integers(0, 3, size=(80, 1))
    obs_a, states_a = env.rollout(init, actions)
    obs_b, states_b = FourRoomsEnv(img_size=64).rollout(
        init, actions.astype(float), env_params=env.env_params
    )
    np.testing.assert_array_equal(states_a, states_b)
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])
    np.testing.assert_array_equal(obs_a["proprio"], states_a.astype(np.float32))
    _, tail = env.rollout(states_a[30], actions[30:])
    np.testing.assert_array_equal(tail, states_a[30:])
    assert len({tuple(s[:2]) for s in states_a}) > 3, "a random walk should move"


def test_turns_and_forward_blocked_by_walls_and_objects(env: FourRoomsEnv) -> None:
    _, states = env.rollout(
        np.array([5.0, 2.0, 0.0]), [[FORWARD], [FORWARD], [FORWARD], [LEFT], [RIGHT], [RIGHT]]
    )
    # (6, 2), (7, 2), then the wall at x = 8 stops it; left faces -y, right twice faces +y.
    np.testing.assert_array_equal(states[1:, :2], [[6, 2], [7, 2], [7, 2], [7, 2], [7, 2], [7, 2]])
    np.testing.assert_array_equal(states[1:, 2], [0, 0, 0, 3, 0, 1])
    _, states = env.rollout(np.array([7.0, 2.0, 1.0]), [[FORWARD]])  # the ball at (7, 3) blocks
    np.testing.assert_array_equal(states[-1], [7, 2, 1])
    _, states = env.rollout(np.array([7.0, 6.0, 0.0]), [[FORWARD], [FORWARD]])  # through the door (8, 6)
    np.testing.assert_array_equal(states[-1], [9, 6, 0])


def test_success_is_the_goal_cell_and_distance_is_the_path_length(env: FourRoomsEnv) -> None:
    goal = np.array([7.0, 2.0, 3.0])
    assert env.eval_state(goal, np.array([7.0, 2.0, 1.0])) == {"success": True, "distance": 0.0}
    near = env.eval_state(goal, np.array([6.0, 2.0, 3.0]))
    assert not near["success"] and near["distance"] == 1.0
    # Across the wall x = 8: from (9, 2) down to the door (8, 6), into (7, 6), up to (7, 4), around the ball
    # at (7, 3) via (6, 4), (6, 3), (6, 2): 4 + 2 + 2 + 4 = 12 cells.
    assert env.eval_state(goal, np.array([9.0, 2.0, 0.0]))["distance"] == 12.0


def test_sample_init_goal_deterministic_in_different_rooms(env: FourRoomsEnv) -> None:
    for seed in range(30):
        init, goal = env.sample_init_goal(seed)
        np.testing.assert_array_equal(goal, env.sample_init_goal(seed)[1])
        assert room_of(int(goal[0]), int(goal[1]), "four_rooms") not in (
            -1,
            room_of(int(init[0]), int(init[1]), "four_rooms"),
        )
        for s in (init, goal):
            assert not env.blocked[int(s[0]), int(s[1])] and s[2] in (0, 1, 2, 3)
    assert not np.array_equal(env.sample_init_goal(0)[0], env.sample_init_goal(1)[0])


def test_layouts_are_deterministic_connected_and_configurable() -> None:
    a, b = FourRoomsEnv(img_size=16, layout_seed=3), FourRoomsEnv(img_size=16, layout_seed=3)
    assert a.env_params == b.env_params != FourRoomsEnv(img_size=16, layout_seed=4).env_params
    env = FourRoomsEnv(img_size=16, num_objects=6, colors=["red", "blue"], object_types=["ball"])
    assert len(env.env_params["objects"]) == 6
    assert {o[0] for o in env.env_params["objects"]} == {"ball"} and {
        o[1] for o in env.env_params["objects"]
    } <= {"red", "blue"}
    two = FourRoomsEnv(img_size=16, layout="two_rooms")
    assert (
        len(two.env_params["doors"]) == 1 and not two.blocked[:, 8].all() and not two.blocked[8, 1:-1].all()
    )
    # Every free cell is reachable.
    free = env.free_cells()
    assert all(env.path_length(np.r_[free[0], 0], np.r_[c, 0]) >= 0 for c in free)
    # randomize_layout: a fresh layout at each plain reset, the same for the same seed.
    r = FourRoomsEnv(img_size=16, randomize_layout=True)
    r.reset(seed=1)
    first = r.env_params
    r.reset(seed=2)
    assert r.env_params != first
    r.reset(seed=1)
    assert r.env_params == first


def test_bad_input_is_refused_with_a_message(env: FourRoomsEnv) -> None:
    with pytest.raises(ValueError, match="wall, an object"):
        env.reset(options={"state": np.array([8.0, 2.0, 0.0])})
    with pytest.raises(ValueError, match="whole"):
        env.reset(options={"state": np.array([5.5, 2.0, 0.0])})
    with pytest.raises(ValueError, match="one index"):
        env.step(3)
    with pytest.raises(ValueError, match="one index"):
        env.step(np.array([0.5]))
    with pytest.raises(ValueError, match="doors"):
        env.set_env_params({"doors": [[8, 6]], "objects": []})
    with pytest.raises(ValueError, match="layout"):
        FourRoomsEnv(layout="three_rooms")
    with pytest.raises(ValueError, match="colors"):
        FourRoomsEnv(colors=["pink"])
    assert SIZE == 17


def test_top_down_render_marks_the_goal_and_feeds_a_video_panel(env: FourRoomsEnv, tmp_path) -> None:
    from dinowm_core.evaluation.video import episode_panels

    plain = env.render_full()
    marked = env.render_full(goal=np.array([3.0, 12.0, 0.0]))
    assert plain.shape == (SIZE * 16, SIZE * 16, 3)
    changed = np.argwhere((plain != marked).any(-1))
    assert changed[:, 0].min() >= 12 * 16 and changed[:, 1].max() < 4 * 16  # only the goal cell (x 3, y 12)
    views = np.stack([env.render()] * 3)
    video = episode_panels(views, None, views[0], 1, np.stack([marked] * 3))
    assert video.shape == (3, SIZE * 16, 4 * SIZE * 16, 3)

"""four_rooms data: policies (valid actions, BFS reaches its targets, exploration visits every room), integer
actions in the store, one-hot (frameskip-concatenated) actions in training windows, the action codec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dinowm_core.data.four_rooms_policies import BFSPolicy, ExplorePolicy, next_action, room_centres
from dinowm_core.data.generate import generate
from dinowm_core.data.normalization import Normalizer
from dinowm_core.data.policies import make_policy
from dinowm_core.data.store import TrajectoryStore
from dinowm_core.data.windows import WindowDataset, check_compatible
from dinowm_core.envs.four_rooms import FourRoomsEnv, room_of

pytest.importorskip("minigrid")


def run(env: FourRoomsEnv, policy, state: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    env.reset(options={"state": state})
    actions, states = [], [state]
    for _ in range(n):
        a = policy(states[-1])
        actions.append(a)
        states.append(env.step(a)[4]["state"])
    return np.stack(actions), np.stack(states)


@pytest.mark.parametrize("name", ["four_rooms_random", "four_rooms_explore", "four_rooms_bfs", "random"])
def test_policies_produce_valid_integer_actions(name: str) -> None:
    env = FourRoomsEnv(img_size=16)
    policy = make_policy(name, env, np.random.default_rng(0))
    actions, states = run(env, policy, env.sample_init_goal(0)[0], 150)
    assert actions.shape == (150, 1) and actions.dtype == np.int64
    assert set(np.unique(actions)) <= {0, 1, 2}
    assert len({tuple(s[:2]) for s in states}) > 5


def test_bfs_reaches_its_targets_on_shortest_paths() -> None:
    env = FourRoomsEnv(img_size=16)
    policy = BFSPolicy(env, np.random.default_rng(1), epsilon=0.0)
    start = env.sample_init_goal(2)[0]
    _, states = run(env, policy, start, 300)
    cells = [tuple(int(v) for v in s[:2]) for s in states]
    reached = policy.targets[:-1]
    assert len(reached) >= 3 and all(t in cells for t in reached)
    # The first target is reached in (path length + turns) steps: at most 3 turns per corner, so the number of
    # forward moves equals the shortest path length exactly.
    first = policy.targets[0]
    t_hit = cells.index(first)
    moves = sum(cells[i] != cells[i + 1] for i in range(t_hit))
    assert moves == env.path_length(start, np.array([*first, 0]))
    assert next_action(env.blocked, np.array([*first, 0.0]), first) is None


def test_explore_visits_every_room_centre_and_looks_around() -> None:
    env = FourRoomsEnv(img_size=16)
    policy = ExplorePolicy(env, np.random.default_rng(0), epsilon=0.0)
    _, states = run(env, policy, env.sample_init_goal(5)[0], 200)
    cells = {tuple(int(v) for v in s[:2]) for s in states}
    assert all(c in cells for c in policy.centres)
    assert {room_of(*c, "four_rooms") for c in cells} >= {0, 1, 2, 3}
    at_centre = [int(s[2]) for s in states if tuple(int(v) for v in s[:2]) == policy.centres[1]]
    assert set(at_centre) == {0, 1, 2, 3}, "it turns all the way round at a centre"
    assert room_centres("two_rooms") == [(4, 8), (12, 8)]


def test_generated_dataset_stores_indices_and_trains_on_one_hots(tmp_path) -> None:
    from dinowm_core.presets import load_config

    out = generate("four_rooms", 4, 12, tmp_path / "d", policy="four_rooms_bfs", img_size=32, progress=False)
    store = TrajectoryStore(out)
    spaces = store.manifest["spaces"]
    assert spaces["action"] == {"shape": [1], "dtype": "int64", "num_actions": 3}
    acts = store.actions(0)
    assert acts.dtype == np.int64 and set(np.unique(acts)) <= {0, 1, 2}
    # The stored transitions follow the env (replay the actions from the first state).
    env = FourRoomsEnv(img_size=32)
    _, states = env.rollout(store.states(0)[0], acts, env_params=store.env_params(0))
    np.testing.assert_array_equal(states[:-1], store.states(0))
    # Windows: frameskip 2 -> each model step's action is 2 concatenated one-hots (6 wide).
    windows = WindowDataset(store, [0, 1], num_frames=3, frameskip=2)
    obs, act, _ = windows[0]
    assert windows.action_dim == 6 and act.shape == (3, 6)
    expected = torch.nn.functional.one_hot(torch.from_numpy(acts[:6, 0]), 3).float().reshape(3, 6)
    torch.testing.assert_close(act, expected, rtol=0, atol=0)
    assert obs["visual"].shape == (3, 3, 32, 32)
    cfg = load_config(["env=four_rooms", "img_size=32", "frameskip=2", "num_hist=2"])
    check_compatible(store.manifest, cfg, str(out))
    with pytest.raises(Exception, match="env.num_actions"):
        check_compatible(store.manifest, load_config([*_four_rooms_as(4), "img_size=32"]), str(out))


def _four_rooms_as(num_actions: int) -> list[str]:
    return ["env=four_rooms", f"env.num_actions={num_actions}"]


def test_two_rooms_preset_generates_in_the_two_rooms_layout(tmp_path) -> None:
    out = generate("four_rooms", 2, 8, tmp_path / "d", policy="two_rooms_bfs", img_size=16, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["env"]["kwargs"] == {"layout": "two_rooms"}
    assert len(TrajectoryStore(out).env_params(0)["doors"]) == 1
    with pytest.raises(ValueError, match="layout=two_rooms"):
        make_policy("two_rooms_bfs", FourRoomsEnv(img_size=16), np.random.default_rng(0))
    with pytest.raises(ValueError, match="four_rooms"):
        generate("wall", 1, 4, tmp_path / "w", policy="four_rooms_bfs", progress=False)


def test_discrete_action_codec_round_trips_numpy_and_torch() -> None:
    norm = Normalizer.identity(1, 3, num_actions=3)
    idx = np.array([[0], [2], [1]], np.float64)
    one_hot = norm.normalize_actions(idx)
    np.testing.assert_array_equal(one_hot, np.eye(3)[[0, 2, 1]])
    np.testing.assert_array_equal(norm.denormalize_actions(one_hot), idx)
    t = norm.normalize_actions(torch.tensor(idx, dtype=torch.float32))
    assert t.dtype == torch.float32 and t.shape == (3, 3)
    assert torch.equal(norm.denormalize_actions(torch.tensor([[0.1, 0.7, 0.2]])), torch.tensor([[1.0]]))
    assert norm.model_action_dim == 3
    assert Normalizer.from_dict(json.loads(json.dumps(norm.to_dict()))).num_actions == 3
    assert "num_actions" not in Normalizer.identity(2, 2).to_dict()
    with pytest.raises(ValueError, match="whole numbers"):
        norm.normalize_actions(np.array([[3.0]]))


def test_cli_generates_each_preset(tmp_path) -> None:
    from typer.testing import CliRunner

    from ray_jobs.cli import app

    for policy in ("four_rooms_explore", "two_rooms_bfs"):
        out = tmp_path / policy
        r = CliRunner().invoke(app, ["data", "generate", "--env", "four_rooms", "--policy", policy, "--episodes", "2",
                                     "--steps", "6", "--img-size", "16", "--out", str(out), "--no-progress"])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert TrajectoryStore(out).manifest["generator"]["policy"] == policy
    r = CliRunner().invoke(app, ["data", "generate", "--env", "wall", "--policy", "four_rooms_bfs", "--episodes", "1",
                                 "--steps", "4", "--out", str(tmp_path / "w")])  # fmt: skip
    assert r.exit_code == 2 and "four_rooms" in r.output

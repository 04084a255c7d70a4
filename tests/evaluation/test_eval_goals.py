"""Goal sources (reference section 5.2): deterministic per seed, and dset goals are env replays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dinowm_core.data.normalization import Normalizer
from dinowm_core.data.store import TrajectoryStore
from dinowm_core.envs import make_env
from dinowm_core.evaluation.goals import episode_seeds, make_targets, save_targets
from tests.evaluation.eval_helpers import make_wall_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return TrajectoryStore(make_wall_dataset(tmp_path_factory.mktemp("goals")))


@pytest.fixture
def env():
    return make_env("wall", img_size=64)


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.episode_seed == y.episode_seed
        np.testing.assert_array_equal(x.init_state, y.init_state)
        np.testing.assert_array_equal(x.goal_state, y.goal_state)
        np.testing.assert_array_equal(x.goal_obs["visual"], y.goal_obs["visual"])


def test_episode_seed_schemes():
    assert episode_seeds(99, 3, "reference") == [1, 100, 199]
    spawn = [episode_seeds(s, 20) for s in (0, 1, 2)]
    flat = [x for seeds in spawn for x in seeds]
    assert len(set(flat)) == len(flat), "spawn seeds must not repeat within or across eval seeds"
    assert episode_seeds(1, 5) == spawn[1][:5], "an episode's seed must not depend on n_evals"


def test_random_state_matches_env_sampler_and_is_deterministic(env):
    targets = make_targets(env, "random_state", 3, 4)
    _same(targets, make_targets(make_env("wall", img_size=64), "random_state", 3, 4))
    for t in targets:
        init, goal = env.sample_init_goal(t.episode_seed)
        np.testing.assert_array_equal(t.init_state, init)
        np.testing.assert_array_equal(t.goal_state, goal)
        obs, _ = env.reset(options={"state": goal})
        np.testing.assert_array_equal(t.goal_obs["visual"], obs["visual"])
    assert not np.array_equal(targets[0].init_state, targets[1].init_state)
    other = make_targets(env, "random_state", 4, 4)
    assert not np.array_equal(other[0].init_state, targets[0].init_state)


def test_dset_goal_is_the_replay_of_recorded_actions(env, store):
    eps = np.arange(store.num_episodes)
    targets = make_targets(env, "dset", 7, 5, frameskip=5, goal_H=3, store=store, val_episodes=eps)
    _same(targets, make_targets(env, "dset", 7, 5, frameskip=5, goal_H=3, store=store, val_episodes=eps))
    for t in targets:
        ep, start = t.origin["episode"], t.origin["start"]
        recorded = store.actions(ep, start, start + 15)
        np.testing.assert_array_equal(t.gt_actions, recorded)
        np.testing.assert_array_equal(t.init_state, store.states(ep, start, start + 1)[0])
        obs, states = env.rollout(t.init_state, recorded, env_params=store.env_params(ep))
        np.testing.assert_array_equal(t.goal_state, states[-1])
        np.testing.assert_array_equal(t.goal_obs["visual"], obs["visual"][-1])
        # the replay reproduces the dataset's own trajectory (same simulator)
        np.testing.assert_allclose(t.goal_state, store.states(ep, start + 15, start + 16)[0], atol=1e-9)
    assert len({(t.origin["episode"], t.origin["start"]) for t in targets}) > 1


def test_dset_rejects_too_short_trajectories(env, store):
    with pytest.raises(ValueError, match="frames"):
        make_targets(env, "dset", 1, 2, frameskip=5, goal_H=20, store=store, val_episodes=np.arange(2))


def test_random_action_replays_denormalized_gaussian_actions(env, store):
    norm = Normalizer.from_manifest(store.manifest)
    eps = np.arange(store.num_episodes)
    targets = make_targets(env, "random_action", 5, 3, frameskip=5, goal_H=2, store=store, val_episodes=eps,
                           normalizer=norm)  # fmt: skip
    for t in targets:
        ep, start = t.origin["episode"], t.origin["start"]
        assert not np.allclose(t.gt_actions, store.actions(ep, start, start + 10))
        _, states = env.rollout(t.init_state, t.gt_actions, env_params=store.env_params(ep))
        np.testing.assert_array_equal(t.goal_state, states[-1])
    z = norm.normalize_actions(np.concatenate([t.gt_actions for t in targets]))
    assert abs(z.mean()) < 0.5 and 0.6 < z.std() < 1.4  # N(0, 1) in normalized space
    with pytest.raises(ValueError, match="normalizer"):
        make_targets(env, "random_action", 5, 3, store=store, val_episodes=eps)


def test_file_targets_round_trip_json_and_npz(env, tmp_path):
    targets = make_targets(env, "random_state", 2, 3)
    path = save_targets(tmp_path / "targets.json", targets)
    loaded = make_targets(env, "file", 2, 3, goal_file=path)
    for a, b in zip(targets, loaded, strict=True):
        np.testing.assert_array_equal(a.goal_state, b.goal_state)
        np.testing.assert_array_equal(a.goal_obs["visual"], b.goal_obs["visual"])
    npz = tmp_path / "targets.npz"
    np.savez(npz, init_state=np.stack([t.init_state for t in targets]),
             goal_state=np.stack([t.goal_state for t in targets]),
             env_params=np.array(json.dumps([t.env_params for t in targets])))  # fmt: skip
    loaded = make_targets(env, "file", 2, 3, goal_file=npz)
    np.testing.assert_array_equal(loaded[2].init_state, targets[2].init_state)
    with pytest.raises(ValueError, match="has 3 targets"):
        make_targets(env, "file", 2, 4, goal_file=path)


def test_file_targets_refuse_pickles(env, tmp_path):
    pkl = tmp_path / "plan_targets.pkl"
    pkl.write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="pickle"):
        make_targets(env, "file", 0, 1, goal_file=pkl)
    obj = tmp_path / "obj.npz"
    np.savez(obj, init_state=np.zeros((1, 2)), goal_state=np.zeros((1, 2)),
             env_params=np.array([{"wall_x": 32}], dtype=object))  # fmt: skip
    with pytest.raises(ValueError, match="[Pp]ickle|allow_pickle"):
        make_targets(env, "file", 0, 1, goal_file=obj)

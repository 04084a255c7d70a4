"""Trajectory store: lossless round trip, random access, statistics, atomic writes and corruption detection."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from dinowm_core.data.normalization import Normalizer, RunningStats
from dinowm_core.data.store import DatasetError, TrajectoryStore
from dinowm_core.data.writer import DatasetWriter


def test_round_trip_is_lossless(make_store):
    # Lengths not multiple of the 20-row batch, shards of 3 episodes: batches span episode boundaries.
    path, eps = make_store([7, 45, 20, 1, 33, 19, 21])
    store = TrajectoryStore(path)
    assert store.num_episodes == 7
    assert len(store.manifest["shards"]) == 3
    for i, ep in enumerate(eps):
        got = store.episode(i)
        assert store.episode_length(i) == len(ep["frames"])
        np.testing.assert_array_equal(got["frames"], ep["frames"])
        np.testing.assert_array_equal(got["actions"], ep["actions"])
        np.testing.assert_array_equal(got["states"], ep["states"])  # float64 states stay float64
        assert got["states"].dtype == np.float64
        np.testing.assert_array_equal(got["proprio"], ep["proprio"])
        assert store.env_params(i) == ep["env_params"]


def test_random_access_by_episode_and_step(make_store):
    path, eps = make_store([30, 50, 25, 41], per_shard=2)
    store = TrajectoryStore(path)
    rng = np.random.default_rng(1)
    for _ in range(200):
        i = int(rng.integers(4))
        steps = rng.integers(0, len(eps[i]["frames"]), size=4)
        np.testing.assert_array_equal(store.frames(i, steps), eps[i]["frames"][steps])
        a, b = sorted(rng.integers(0, len(eps[i]["frames"]) + 1, size=2))
        np.testing.assert_array_equal(store.actions(i, a, b), eps[i]["actions"][a:b])
    with pytest.raises(IndexError):
        store.frames(0, [30])
    with pytest.raises(IndexError):
        store.actions(4)


def test_statistics_match_numpy_unbiased(make_store):
    path, eps = make_store([10, 23, 5, 40], action_scale=100.0)
    store = TrajectoryStore(path)
    acts = np.concatenate([e["actions"] for e in eps]).astype(np.float64) / 100.0
    prop = np.concatenate([e["proprio"] for e in eps]).astype(np.float64)
    norm = store.manifest["normalization"]
    np.testing.assert_allclose(norm["action"]["mean"], acts.mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm["action"]["std"], acts.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(norm["proprio"]["std"], prop.std(0, ddof=1), rtol=1e-10)
    assert norm["action"]["count"] == len(acts)


def test_running_stats_merge_equals_one_pass():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(101, 3))
    a, b, whole = RunningStats(3), RunningStats(3), RunningStats(3)
    a.update(x[:40])
    b.update(x[40:])
    a.merge(RunningStats.from_dict(json.loads(json.dumps(b.to_dict()))))
    whole.update(x)
    np.testing.assert_allclose(a.std, x.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(a.mean, whole.mean, rtol=1e-12)


def test_normalizer_round_trip_and_json():
    n = Normalizer([1.0, -2.0], [0.5, 2.0], [0.0, 1.0, 2.0], [1.0, 0.0, 3.0], action_scale=100.0)
    a = np.array([[150.0, -100.0]])
    z = n.normalize_actions(a)
    np.testing.assert_allclose(z, [[(1.5 - 1.0) / 0.5, (-1.0 + 2.0) / 2.0]])
    np.testing.assert_allclose(n.denormalize_actions(z), a)
    import torch

    zt = n.normalize_actions(torch.tensor(a, dtype=torch.float32))
    assert zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-6)
    # A zero-std (dummy) dim maps to (p - mean) instead of inf.
    np.testing.assert_allclose(n.normalize_proprio(np.array([1.0, 1.0, 5.0])), [1.0, 0.0, 1.0])
    back = Normalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    np.testing.assert_array_equal(back.action_std, n.action_std)
    assert back.action_scale == 100.0
    with pytest.raises(ValueError, match="unknown keys"):
        Normalizer.from_dict({**n.to_dict(), "extra": 1})


def test_unfinished_dataset_is_never_accepted(tmp_path):
    out = tmp_path / "ds"
    base = {"env": {"name": "wall", "action_scale": 1.0}}
    with pytest.raises(RuntimeError), DatasetWriter(out, base, episodes_per_shard=1) as w:
        w.add_episode(np.zeros((5, 8, 8, 3), np.uint8), np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((5, 2)))
        w.add_episode(np.zeros((5, 8, 8, 3), np.uint8), np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((5, 2)))
        raise RuntimeError("crash mid-write")
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # the temp directory is gone too
    # A directory with shards but no manifest (a writer killed before close) is refused.
    w = DatasetWriter(out, base, episodes_per_shard=1)
    w.add_episode(np.zeros((5, 8, 8, 3), np.uint8), np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(DatasetError, match="manifest.json: missing"):
        TrajectoryStore(w.tmp_dir)
    w.abort()


def test_bad_episode_input_is_rejected(tmp_path):
    base = {"env": {"name": "wall", "action_scale": 1.0}}
    with DatasetWriter(tmp_path / "ds", base) as w:
        with pytest.raises(DatasetError, match="uint8"):
            w.add_episode(
                np.zeros((5, 8, 8, 3), np.float32), np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((5, 2))
            )
        with pytest.raises(DatasetError, match="actions must be"):
            w.add_episode(
                np.zeros((5, 8, 8, 3), np.uint8), np.zeros((4, 2)), np.zeros((5, 2)), np.zeros((5, 2))
            )
        with pytest.raises(DatasetError, match="NaN"):
            w.add_episode(
                np.zeros((5, 8, 8, 3), np.uint8), np.full((5, 2), np.nan), np.zeros((5, 2)), np.zeros((5, 2))
            )
        w.add_episode(np.zeros((5, 8, 8, 3), np.uint8), np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(FileExistsError):
        DatasetWriter(tmp_path / "ds", base)


def test_truncated_file_error_names_the_file(make_store):
    path, _ = make_store([20, 20, 20, 20])
    shard = path / "shard-00001.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="shard-00001.arrow.*truncated"):
        TrajectoryStore(path)


def test_same_size_corruption_error_names_the_file(make_store):
    path, _ = make_store([20, 20, 20, 20], per_shard=4)
    shard = path / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[-200:] = b"\0" * 200  # destroy the footer; the size stays the same
    shard.write_bytes(bytes(data))
    store = TrajectoryStore(path)  # sizes still match: opening the shard itself must fail clearly
    with pytest.raises(DatasetError, match="shard-00000.arrow"):
        store.frames(0, [0])
    assert any("shard-00000.arrow" in p and "sha256" in p for p in store.verify())


def test_verify_detects_a_flipped_byte(make_store):
    path, _ = make_store([20, 20, 20])
    assert TrajectoryStore(path).verify() == []
    shard = path / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = TrajectoryStore(path).verify()
    assert len(problems) == 1 and "shard-00000.arrow" in problems[0]


def test_schema_version_is_checked(make_store):
    path, _ = make_store([5])
    m = json.loads((path / "manifest.json").read_text())
    m["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="schema_version 99"):
        TrajectoryStore(path)


def test_store_pickles_by_path_and_reopens(make_store):
    path, eps = make_store([12, 9])
    store = TrajectoryStore(path)
    store.frames(1, [0])
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 1000  # no data travels to DataLoader workers
    np.testing.assert_array_equal(clone.frames(1, [3, 8]), eps[1]["frames"][[3, 8]])
    assert os.fspath(clone.path) == os.fspath(path)

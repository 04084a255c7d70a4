"""Training windows: shapes, frameskip grouping, episode boundaries, splits, per-epoch shuffling, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dinowm_core.data.normalization import Normalizer
from dinowm_core.data.store import DatasetError, TrajectoryStore
from dinowm_core.data.windows import (
    EpochShuffleSampler,
    TrajectoryDataset,
    WindowDataset,
    build_datasets,
    frames_to_tensor,
    split_episodes,
)
from dinowm_core.presets import load_config


def test_window_shapes_and_frameskip_grouping(make_store):
    path, eps = make_store([40, 25, 19, 60])  # episode 2 is shorter than the 20-step span: no windows
    store = TrajectoryStore(path)
    ident = Normalizer.identity(2, 2)
    ds = WindowDataset(store, [0, 1, 2, 3], num_frames=4, frameskip=5, normalizer=ident)
    # starts s = 0 .. T - 20 inclusive per episode
    assert len(ds) == (40 - 20 + 1) + (25 - 20 + 1) + 0 + (60 - 20 + 1)
    obs, act, state = ds[3]
    ep, s = ds.window(3)
    assert (ep, s) == (0, 3)
    assert obs["visual"].shape == (4, 3, 16, 16) and obs["visual"].dtype == torch.float32
    assert obs["proprio"].shape == (4, 2) and state.shape == (4, 2)
    assert act.shape == (4, 10)  # f * d
    raw = eps[0]["actions"][s : s + 20]
    # row k = the 5 raw actions from frame k to frame k+1, concatenated in time order
    np.testing.assert_allclose(act.numpy(), raw.reshape(4, 10), rtol=1e-6)
    np.testing.assert_allclose(act[1, 2:4].numpy(), eps[0]["actions"][s + 6], rtol=1e-6)
    np.testing.assert_array_equal(state[:, 1].numpy(), [s, s + 5, s + 10, s + 15])
    expect = eps[0]["frames"][[s, s + 5, s + 10, s + 15]].transpose(0, 3, 1, 2) / 255.0 * 2 - 1
    np.testing.assert_allclose(obs["visual"].numpy(), expect, atol=1e-6)


def test_no_window_crosses_an_episode(make_store):
    path, _ = make_store([23, 31, 20, 26])
    ds = WindowDataset(
        TrajectoryStore(path), [0, 1, 2, 3], num_frames=2, frameskip=3, normalizer=Normalizer.identity(2, 2)
    )
    for idx in range(len(ds)):
        _, _, state = ds[idx]
        assert len(set(state[:, 0].tolist())) == 1  # state[:, 0] is the episode id
        assert np.all(np.diff(state[:, 1].numpy()) == 3)
    assert max(ds.window(i)[1] for i in range(len(ds)) if ds.window(i)[0] == 2) == 20 - 6


def test_actions_and_proprio_are_normalized_with_scale(make_store):
    path, eps = make_store([30, 30], action_scale=100.0)
    store = TrajectoryStore(path)
    ds = WindowDataset(store, [1], num_frames=2, frameskip=2)
    _, act, _ = ds[0]
    st = store.manifest["normalization"]["action"]
    want = (eps[1]["actions"][0:4].astype(np.float64) / 100.0 - st["mean"]) / st["std"]
    np.testing.assert_allclose(act.numpy(), want.reshape(2, 4), rtol=1e-5)


def test_resize_to_model_img_size():
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[:, :8] = 255
    x = frames_to_tensor(frames, img_size=32)
    assert x.shape == (2, 3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    assert x[0, 0, 0, 0] == 1.0 and x[0, 0, -1, 0] == -1.0


def test_split_is_reproducible_and_disjoint():
    tr, va = split_episodes(50, 0.9, 42)
    tr2, va2 = split_episodes(50, 0.9, 42)
    np.testing.assert_array_equal(tr, tr2)
    assert len(tr) == 45 and len(va) == 5 and not set(tr) & set(va)
    assert sorted([*tr, *va]) == list(range(50))
    # The reference's split: torch.randperm with a Generator seeded 42.
    ref = torch.randperm(50, generator=torch.Generator().manual_seed(42)).numpy()
    np.testing.assert_array_equal(tr, ref[:45])
    assert not np.array_equal(split_episodes(50, 0.9, 43)[0], tr)


def test_epoch_sampler_reshuffles_every_epoch_reproducibly():
    s = EpochShuffleSampler(100, seed=0)
    e0 = list(s)
    assert list(s) == e0  # same epoch -> same order
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(e1) == list(range(100))
    s2 = EpochShuffleSampler(100, seed=0)
    s2.set_epoch(1)
    assert list(s2) == e1


def test_distributed_sampler_partitions_windows(make_store):
    path, _ = make_store([30, 30, 30])
    ds = WindowDataset(
        TrajectoryStore(path), [0, 1, 2], num_frames=2, frameskip=2, normalizer=Normalizer.identity(2, 2)
    )
    seen = []
    orders = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True)
        sampler.set_epoch(0)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=0)
        ids = []
        for _, _, state in loader:
            ids += [(int(e), int(t)) for e, t in state[:, 0, :2].tolist()]
        seen.append(ids)
        sampler.set_epoch(1)
        orders.append(list(sampler))
    assert not set(seen[0]) & set(seen[1])  # the two ranks read disjoint windows
    assert len(seen[0]) + len(seen[1]) == len(ds) // 2 * 2
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(0)
    assert list(sampler) != orders[0]  # epoch 1 differs from epoch 0


def test_dataloader_with_worker_processes(make_store):
    path, _ = make_store([25, 25])
    ds = WindowDataset(
        TrajectoryStore(path), [0, 1], num_frames=2, frameskip=2, normalizer=Normalizer.identity(2, 2)
    )
    loader = DataLoader(ds, batch_size=8, num_workers=2, sampler=EpochShuffleSampler(len(ds)))
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == len(ds)


def test_trajectory_dataset_item(make_store):
    path, eps = make_store([12, 9])
    ds = TrajectoryDataset(TrajectoryStore(path), [1], normalizer=Normalizer.identity(2, 2))
    obs, act, state, params = ds[0]
    assert obs["visual"].shape == (9, 3, 16, 16) and act.shape == (9, 2) and state.shape == (9, 2)
    assert params == eps[1]["env_params"] and ds.get_seq_length(0) == 9


def test_build_datasets_split_and_env_checks(make_store):
    path, _ = make_store([30] * 10)
    cfg = load_config(["env=wall", f"data.path={path}", "img_size=32", "frameskip=2", "num_hist=3"])
    with pytest.raises(DatasetError, match="frames are 16 px, config img_size is 32"):
        build_datasets(cfg)
    cfg = load_config(["env=wall", f"data.path={path}", "img_size=32", "frameskip=2", "num_hist=3",
                       "data.allow_resize=true"])  # fmt: skip
    tr, va, ttr, tva = build_datasets(cfg)
    assert len(ttr) == 9 and len(tva) == 1
    assert not set(ttr.episodes) & set(tva.episodes)
    assert tr[0][0]["visual"].shape == (4, 3, 32, 32) and tr[0][1].shape == (4, 4)
    assert tr.action_dim == cfg.action_dim
    with pytest.raises(DatasetError, match="'wall'.*'pusht'"):
        build_datasets(load_config(["env=pusht", f"data.path={path}"]))
    bad, _ = make_store([30] * 2, name="bad", state_dim=3)
    with pytest.raises(DatasetError, match="state_dim = 3.*env.state_dim = 2"):
        build_datasets(load_config(["env=wall", f"data.path={bad}", "img_size=16"]))


def test_folder_split_from_manifest(make_store):
    path, _ = make_store([25] * 5, extra={"splits": {"train": [0, 1, 2], "val": [3, 4]}})
    cfg = load_config(["env=wall", f"data.path={path}", "img_size=16", "frameskip=1", "num_hist=1"])
    _, _, ttr, tva = build_datasets(cfg)
    assert list(ttr.episodes) == [0, 1, 2] and list(tva.episodes) == [3, 4]


def test_n_rollout_truncates_each_folder_of_a_folder_split(make_store):
    """Reference PushT: train/ and val/ are two datasets, each cut to its first n trajectories."""
    path, _ = make_store([25] * 5, extra={"splits": {"train": [0, 1, 2], "val": [3, 4]}})
    cfg = load_config(["env=wall", f"data.path={path}", "img_size=16", "frameskip=1", "num_hist=1",
                       "data.n_rollout=2"])  # fmt: skip
    _, va, ttr, tva = build_datasets(cfg)
    assert list(ttr.episodes) == [0, 1] and list(tva.episodes) == [3, 4]
    assert len(va) > 0

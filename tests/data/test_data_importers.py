"""Importers of the reference layouts: synthetic fixtures per layout, round trip, safe pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dinowm_core.data.importers import UnsafePickleError, import_dino_wm, load_plain_list
from dinowm_core.data.store import DatasetError, TrajectoryStore

RNG = np.random.default_rng(0)


def _imgs(T, h=8, channels_first=False):
    x = torch.from_numpy(RNG.integers(0, 256, (T, h, h, 3), dtype=np.uint8))
    return x.permute(0, 3, 1, 2).contiguous() if channels_first else x


def test_wall_single_round_trip(tmp_path):
    src = tmp_path / "wall_single"
    (src / "obses").mkdir(parents=True)
    N, T = 3, 6
    states, actions = torch.randn(N, T, 2), torch.randn(N, T, 2)
    torch.save(states, src / "states.pth")
    torch.save(actions, src / "actions.pth")
    torch.save(torch.tensor([[30.0] * T, [25.0] * T, [34.0] * T]), src / "door_locations.pth")
    torch.save(torch.full((N, T), 32.0), src / "wall_locations.pth")
    obses = [_imgs(T, channels_first=True) for _ in range(N)]
    for i, o in enumerate(obses):
        torch.save(o, src / "obses" / f"episode_{i:03d}.pth")
    import_dino_wm("wall", src, tmp_path / "out")
    store = TrajectoryStore(tmp_path / "out")
    assert store.num_episodes == N and store.env_name == "wall"
    for i in range(N):
        np.testing.assert_array_equal(store.frames(i, np.arange(T)), obses[i].permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(store.actions(i), actions[i].numpy())
        np.testing.assert_array_equal(store.states(i), states[i].numpy())
        np.testing.assert_array_equal(store.proprio(i), states[i].numpy())
    assert store.env_params(1) == {"door_y": 25, "wall_x": 32}


def test_point_maze_round_trip_with_lengths(tmp_path):
    src = tmp_path / "point_maze"
    (src / "obses").mkdir(parents=True)
    states, actions = torch.randn(2, 10, 4), torch.randn(2, 10, 2)
    torch.save(states, src / "states.pth")
    torch.save(actions, src / "actions.pth")
    torch.save(torch.tensor([10, 7]), src / "seq_lengths.pth")
    obses = [_imgs(10) for _ in range(2)]
    for i, o in enumerate(obses):
        torch.save(o, src / "obses" / f"episode_{i:03d}.pth")
    import_dino_wm("point_maze", src, tmp_path / "out")
    store = TrajectoryStore(tmp_path / "out")
    assert [store.episode_length(i) for i in range(2)] == [10, 7]  # padding beyond seq_length is dropped
    np.testing.assert_array_equal(store.frames(1, np.arange(7)), obses[1][:7].numpy())
    np.testing.assert_array_equal(store.states(1), states[1, :7].numpy())
    # statistics are over valid timesteps only
    valid = np.concatenate([actions[0].numpy(), actions[1, :7].numpy()]).astype(np.float64)
    np.testing.assert_allclose(
        store.manifest["normalization"]["action"]["std"], valid.std(0, ddof=1), rtol=1e-6
    )


@pytest.mark.parametrize("env", ["rope", "granular"])
def test_deformable_round_trip(tmp_path, env):
    src = tmp_path / env
    N, T, P = 2, 5, 3
    states, actions = torch.randn(N, T, P, 4), torch.randn(N, T, 4)
    torch.save(states, (src.mkdir(parents=True), src / "states.pth")[1])
    torch.save(actions, src / "actions.pth")
    for i in range(N):
        (src / f"{i:06d}").mkdir()
        torch.save(_imgs(T), src / f"{i:06d}" / "obses.pth")
    import_dino_wm(env, src, tmp_path / "out")
    store = TrajectoryStore(tmp_path / "out")
    np.testing.assert_array_equal(store.states(1), states[1].reshape(T, P * 4).numpy())
    np.testing.assert_array_equal(store.proprio(0), np.zeros((T, 1)))


def _write_mp4(path, frames):
    av = pytest.importorskip("av", reason="PyAV is needed to write and decode the PushT mp4 fixture")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        stream.options = {"crf": "0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _pusht_split(d, N, Tmax, lengths, shapes=None):
    (d / "obses").mkdir(parents=True)
    torch.save(torch.randn(N, Tmax, 5) * 100, d / "states.pth")
    torch.save(torch.randn(N, Tmax, 2), d / "velocities.pth")
    torch.save(torch.randn(N, Tmax, 2) * 20, d / "rel_actions.pth")
    (d / "seq_lengths.pkl").write_bytes(pickle.dumps(lengths))
    if shapes:
        (d / "shapes.pkl").write_bytes(pickle.dumps(shapes))
    videos = []
    for i in range(N):
        # smooth frames (a horizontal ramp brightening over time): the codec round trip is near exact
        ramp = np.linspace(0, 255, 32)
        f = np.stack(
            [np.broadcast_to((ramp[None, :] * (t + 1) / Tmax)[..., None], (32, 32, 3)) for t in range(Tmax)]
        )
        f = f.astype(np.uint8)
        _write_mp4(d / "obses" / f"episode_{i:03d}.mp4", f)
        videos.append(f)
    return videos


def test_pusht_noise_round_trip_with_folder_split(tmp_path):
    src = tmp_path / "pusht_noise"
    train = _pusht_split(src / "train", 2, 6, [6, 4], shapes=["T", "L"])
    _pusht_split(src / "val", 1, 6, [5])
    import_dino_wm("pusht", src, tmp_path / "out")
    store = TrajectoryStore(tmp_path / "out")
    assert store.manifest["splits"] == {"train": [0, 1], "val": [2]}
    assert store.manifest["env"]["action_scale"] == 1.0  # pixels were converted to env units
    assert [store.episode_length(i) for i in range(3)] == [6, 4, 5]
    assert store.env_params(1) == {"shape": "L"}
    st = torch.load(src / "train" / "states.pth", weights_only=True)
    vel = torch.load(src / "train" / "velocities.pth", weights_only=True)
    np.testing.assert_array_equal(store.states(1), torch.cat([st[1, :4], vel[1, :4]], -1).numpy())
    np.testing.assert_array_equal(store.proprio(1), torch.cat([st[1, :4, :2], vel[1, :4]], -1).numpy())
    act = torch.load(src / "train" / "rel_actions.pth", weights_only=True)
    # stored in env units: the reference's pixels / 100 (what PushTEnv.step takes)
    np.testing.assert_allclose(store.actions(0), act[0].numpy() / 100.0, rtol=1e-6)
    err = np.abs(store.frames(0, np.arange(6)).astype(int) - train[0].astype(int))
    assert err.mean() < 2.0  # RGB -> YUV conversion is the only loss


def test_restricted_unpickler(tmp_path):
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps([3, 4, 5]))
    assert load_plain_list(good, int) == [3, 4, 5]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([1, Evil()]))
    with pytest.raises(UnsafePickleError, match="refuses to load builtins.print"):
        load_plain_list(evil, int)
    np_ints = tmp_path / "np.pkl"
    np_ints.write_bytes(pickle.dumps([np.int64(3)]))
    with pytest.raises(UnsafePickleError, match="numpy"):
        load_plain_list(np_ints, int)
    mixed = tmp_path / "mixed.pkl"
    mixed.write_bytes(pickle.dumps([1, "a"]))
    with pytest.raises(UnsafePickleError, match="only int"):
        load_plain_list(mixed, int)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UnsafePickleError):
        load_plain_list(tmp_path / "junk.pkl", int)


def test_missing_or_bad_files_leave_nothing(tmp_path):
    src = tmp_path / "wall_single"
    (src / "obses").mkdir(parents=True)
    torch.save(torch.randn(2, 4, 2), src / "states.pth")
    torch.save(torch.randn(2, 4, 2), src / "actions.pth")
    torch.save(_imgs(4, channels_first=True), src / "obses" / "episode_000.pth")
    with pytest.raises(DatasetError, match="episode_001.pth: missing"):
        import_dino_wm("wall", src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out*"))
    torch.save(_imgs(4, channels_first=True).float(), src / "obses" / "episode_001.pth")
    with pytest.raises(DatasetError, match="episode_001.pth: expected uint8"):
        import_dino_wm("wall", src, tmp_path / "out")

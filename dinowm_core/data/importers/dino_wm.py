"""Import the original DINO-WM dataset layouts (reference section 3.2) into a trajectory store.

| env            | layout under SRC                                                                       |
|----------------|----------------------------------------------------------------------------------------|
| pusht          | [train/ val/] states.pth (N,T,5), velocities.pth (N,T,2), rel_actions.pth, seq_lengths.pkl, |
|                | obses/episode_XXX.mp4, shapes.pkl (optional); state = [states | velocities] (7-D),    |
|                | proprio = [ax, ay, vx, vy]; pixel actions / 100 -> env units (action_scale 1)         |
| point_maze     | states.pth (N,T,4), actions.pth, seq_lengths.pth, obses/episode_XXX.pth (T,H,W,C)      |
| wall           | states.pth (N,T,2), actions.pth, obses/episode_XXX.pth channels-first (T,C,H,W),       |
|                | door_locations.pth / wall_locations.pth (N,T) -> env_params {door_y, wall_x} (step 0)  |
| rope, granular | states.pth (N,T,P,4) -> (T,4P), actions.pth (N,T,4), {idx:06d}/obses.pth (T,H,W,C);     |
|                | proprio is a dummy zero (T,1) as in the reference                                      |

Tensors load with ``torch.load(weights_only=True)``; pickles with a no-globals unpickler. PushT's train/
and val/ folders become one dataset whose manifest ``splits`` keeps the reference's folder split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinowm_core.data.importers.safe_pickle import load_plain_list
from dinowm_core.data.store import DatasetError, Episode
from dinowm_core.data.writer import DatasetWriter

log = logging.getLogger(__name__)

LAYOUTS = ("pusht", "point_maze", "wall", "rope", "granular")


def _load_tensor(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file (UnpicklingError, RuntimeError...)
        raise DatasetError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
    if not isinstance(value, torch.Tensor):
        raise DatasetError(f"{path}: expected a tensor, got {type(value).__name__}")
    return value.numpy()


def _frames(x: np.ndarray, path: Path, channels_first: bool = False) -> np.ndarray:
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DatasetError(f"{path}: expected uint8 (T, H, W, C) images, got {x.dtype} {x.shape}")
    if channels_first:
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] != 3:
        raise DatasetError(f"{path}: expected 3 channels, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _decode_video(path: Path) -> np.ndarray:
    try:
        import av
    except ImportError:
        raise DatasetError(f"{path}: decoding mp4 needs PyAV (pip install av)") from None
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise DatasetError(f"{path}: cannot decode video ({e})") from None
    if not frames:
        raise DatasetError(f"{path}: no video frames")
    return np.stack(frames)


def _check_len(name: str, x: np.ndarray, n: int, path: Path) -> None:
    if len(x) < n:
        raise DatasetError(f"{path}: {name} has {len(x)} steps, expected at least {n}")


PUSHT_PIXELS_PER_UNIT = 100.0  # reference action_scale: rel_actions.pth holds pixels


def _pusht_split(src: Path) -> Iterator[Episode]:
    states = _load_tensor(src / "states.pth")
    vel = _load_tensor(src / "velocities.pth")
    actions = _load_tensor(src / "rel_actions.pth")
    lengths = load_plain_list(src / "seq_lengths.pkl", int)
    shapes = load_plain_list(src / "shapes.pkl", str) if (src / "shapes.pkl").is_file() else None
    n = len(lengths)
    for name, arr in (("states", states), ("velocities", vel), ("rel_actions", actions)):
        if len(arr) != n:
            raise DatasetError(f"{src / (name + '.pth')}: {len(arr)} episodes, seq_lengths.pkl has {n}")
    for i, T in enumerate(lengths):
        video = src / "obses" / f"episode_{i:03d}.mp4"
        frames = _decode_video(video)
        _check_len("video", frames, T, video)
        state = np.concatenate([states[i, :T], vel[i, :T]], axis=-1)
        proprio = np.concatenate([states[i, :T, :2], vel[i, :T]], axis=-1)
        params = {"shape": shapes[i]} if shapes else {}
        # Reference rel_actions are pixels; the env (and our stores) use units of PUSHT_PIXELS_PER_UNIT px.
        env_actions = actions[i, :T] / PUSHT_PIXELS_PER_UNIT
        yield Episode.build(frames[:T], env_actions, state, proprio, params)


def _point_maze(src: Path) -> Iterator[Episode]:
    states = _load_tensor(src / "states.pth")
    actions = _load_tensor(src / "actions.pth")
    lengths = _load_tensor(src / "seq_lengths.pth").astype(np.int64).reshape(-1)
    for i, T in enumerate(lengths.tolist()):
        path = src / "obses" / f"episode_{i:03d}.pth"
        frames = _frames(_load_tensor(path), path)
        _check_len("obses", frames, T, path)
        yield Episode.build(frames[:T], actions[i, :T], states[i, :T], states[i, :T])


def _wall(src: Path) -> Iterator[Episode]:
    states = _load_tensor(src / "states.pth")
    actions = _load_tensor(src / "actions.pth")
    door = _load_tensor(src / "door_locations.pth") if (src / "door_locations.pth").is_file() else None
    wall = _load_tensor(src / "wall_locations.pth") if (src / "wall_locations.pth").is_file() else None
    T = actions.shape[1]
    for i in range(len(actions)):
        path = src / "obses" / f"episode_{i:03d}.pth"
        frames = _frames(_load_tensor(path), path, channels_first=True)
        _check_len("obses", frames, T, path)
        params: dict[str, Any] = {}
        if door is not None:
            params["door_y"] = _scalar(door[i].reshape(-1)[0])
        if wall is not None:
            params["wall_x"] = _scalar(wall[i].reshape(-1)[0])
        yield Episode.build(frames[:T], actions[i], states[i], states[i], params)


def _scalar(v: Any) -> int | float:
    v = float(v)
    return int(v) if v.is_integer() else v


def _deformable(src: Path) -> Iterator[Episode]:
    states = _load_tensor(src / "states.pth")
    actions = _load_tensor(src / "actions.pth")
    if states.ndim != 4:
        raise DatasetError(f"{src / 'states.pth'}: expected (N, T, P, 4), got {states.shape}")
    T = states.shape[1]
    for i in range(len(states)):
        path = src / f"{i:06d}" / "obses.pth"
        frames = _frames(_load_tensor(path), path)
        _check_len("obses", frames, T, path)
        flat = states[i].reshape(T, -1)
        yield Episode.build(frames[:T], actions[i, :T], flat, np.zeros((T, 1), np.float32))


def _episodes(env: str, src: Path) -> tuple[list[Iterator[Episode]], list[str]]:
    """Episode iterators per split folder, and the split names (empty = one unsplit folder)."""
    if env == "pusht":
        if (src / "train").is_dir() and (src / "val").is_dir():
            return [_pusht_split(src / "train"), _pusht_split(src / "val")], ["train", "val"]
        return [_pusht_split(src)], []
    reader = {"point_maze": _point_maze, "wall": _wall, "rope": _deformable, "granular": _deformable}[env]
    return [reader(src)], []


def import_dino_wm(
    env: str, src: str | Path, out: str | Path, *, episodes_per_shard: int = 50
) -> dict[str, Any]:
    """Convert the reference dataset at ``src`` for ``env`` into a store at ``out``; returns the manifest."""
    if env not in LAYOUTS:
        raise ValueError(f"unknown layout for env {env!r} (choices: {', '.join(LAYOUTS)})")
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such directory")
    iterators, split_names = _episodes(env, src)
    base: dict[str, Any] = {
        # Stores hold env units (what env.step takes); _pusht_split already divided the reference's pixels.
        "env": {"name": env, "action_scale": 1.0},
        "generator": {"source": "dinowm data import-dino-wm", "src": str(src.resolve()), "layout": env},
        "conventions": "action[t] is applied at frame t (reference layout: equal-length obs and actions)",
    }
    splits: dict[str, list[int]] = {}
    with DatasetWriter(out, base, episodes_per_shard=episodes_per_shard) as writer:
        n = 0
        for name, it in zip(split_names or [None], iterators, strict=True):
            first = n
            for ep in it:
                writer.add_episode(ep.frames, ep.actions, ep.states, ep.proprio, ep.env_params)
                n += 1
            if name:
                splits[name] = list(range(first, n))
        if n == 0:
            raise DatasetError(f"{src}: no episodes found")
        if splits:
            writer.manifest_base["splits"] = splits
        manifest = writer.close()
    log.info("imported %d episodes from %s into %s", n, src, out)
    return manifest

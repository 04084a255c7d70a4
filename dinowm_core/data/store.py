"""The trajectory store: episodes as memory-mapped Arrow IPC files (replaces reference section 3.2's .pth/.mp4).

A dataset is a directory::

    manifest.json        schema version, env (name, action_scale), spaces, image size, episode lengths,
                         normalization statistics, generator (policy, seed), sha256 + size of every data file
    episodes.arrow       one row per episode: episode, shard, first_row, length, env_params (JSON)
    shard-00000.arrow    one row per timestep: episode, step, image (fixed-size binary H*W*3 uint8),
    shard-00001.arrow    action / state / proprio (fixed-size float lists); zstd; record batches of
    ...                  ``batch_rows`` (20) rows across episode boundaries, so row r is in batch r // 20

Convention: ``action[t]`` is applied at observation ``t`` (the reference stores equal-length obs and action
sequences); actions are stored in env units (PushT: relative pixels), and the manifest's action statistics are
those of ``action / env.action_scale``. Random access decompresses only the record batches a read touches
(images separately from the small numeric columns, which are loaded per shard on first use).

A reader requires ``manifest.json`` (written last by every writer), checks its schema version and every data
file's size on open, and raises :class:`DatasetError` naming the file for anything truncated or corrupted.
:meth:`TrajectoryStore.verify` recomputes every checksum (:mod:`dinowm_core.data.integrity`).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dinowm_core.data.integrity import file_problems, verify_dataset

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
EPISODES_FILE = "episodes.arrow"
BATCH_ROWS = 20
_CACHED_BATCHES = 8


class DatasetError(Exception):
    """A dataset is missing, incomplete, corrupted or incompatible; the message names the file."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def episode_schema(spaces: dict[str, Any]) -> pa.Schema:
    H, W, C = spaces["image"]["shape"]
    fields = [
        pa.field("episode", pa.int32()),
        pa.field("step", pa.int32()),
        pa.field("image", pa.binary(H * W * C)),
    ]
    for k in ("action", "state", "proprio"):
        fields.append(
            pa.field(k, pa.list_(pa.from_numpy_dtype(np.dtype(spaces[k]["dtype"])), spaces[k]["shape"][0]))
        )
    return pa.schema(fields)


def episodes_table_schema() -> pa.Schema:
    return pa.schema(
        [
            ("episode", pa.int32()),
            ("shard", pa.int32()),
            ("first_row", pa.int64()),
            ("length", pa.int32()),
            ("env_params", pa.string()),
        ]
    )


@dataclass
class Episode:
    """One episode of T steps: ``frames`` uint8 (T, H, W, 3), ``actions`` (T, d) float32 (or int64 indices of a
    discrete env, d = 1), ``states``, ``proprio``."""

    frames: np.ndarray
    actions: np.ndarray
    states: np.ndarray
    proprio: np.ndarray
    env_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, frames, actions, states, proprio, env_params=None) -> Episode:  # noqa: ANN001
        frames = np.ascontiguousarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DatasetError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        T = len(frames)
        if T == 0:
            raise DatasetError("an episode needs at least one step")
        arrays = {}
        for name, x, default in (
            ("actions", actions, np.float32),
            ("states", states, None),
            ("proprio", proprio, np.float32),
        ):
            x = np.asarray(x)
            if name == "actions" and x.dtype.kind in "iu":
                x = x.astype(np.int64)  # a discrete env's action index (four_rooms, memory_maze), kept exact
            elif x.dtype.kind != "f":
                x = x.astype(default or np.float32)
            elif default is not None:
                x = x.astype(default)
            if x.ndim != 2 or len(x) != T:
                raise DatasetError(f"{name} must be ({T}, dim) like the {T} frames, got {x.shape}")
            if not np.isfinite(x).all():
                raise DatasetError(f"{name} contains NaN or inf")
            arrays[name] = np.ascontiguousarray(x)
        params = dict(env_params or {})
        json.dumps(params)  # fail early on values that cannot be stored
        return cls(frames, arrays["actions"], arrays["states"], arrays["proprio"], params)


class _Shard:
    """One memory-mapped shard: an image-only reader plus numeric columns loaded on first use."""

    def __init__(self, path: Path, num_rows: int, batch_rows: int) -> None:
        self.path = path
        try:
            self._mmap = pa.memory_map(str(path), "r")
            self._images = pa.ipc.open_file(self._mmap, options=pa.ipc.IpcReadOptions(included_fields=[2]))
        except (OSError, pa.ArrowInvalid) as e:
            raise DatasetError(f"{path}: cannot open Arrow file ({e})") from None
        expected = -(-num_rows // batch_rows)
        if self._images.num_record_batches != expected:
            raise DatasetError(
                f"{path}: {self._images.num_record_batches} record batches, expected {expected} "
                f"({num_rows} rows in batches of {batch_rows})"
            )
        self.batch_rows = batch_rows
        self._numeric: dict[str, np.ndarray] | None = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def numeric(self) -> dict[str, np.ndarray]:
        if self._numeric is None:
            try:
                reader = pa.ipc.open_file(
                    self._mmap, options=pa.ipc.IpcReadOptions(included_fields=[3, 4, 5])
                )
                table = reader.read_all()
            except (OSError, pa.ArrowInvalid) as e:
                raise DatasetError(f"{self.path}: cannot read numeric columns ({e})") from None
            out = {}
            for name in ("action", "state", "proprio"):
                col = table.column(name).combine_chunks()
                out[name] = col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
            self._numeric = out
        return self._numeric

    def image_batch(self, b: int, frame_shape: tuple[int, ...]) -> np.ndarray:
        hit = self._cache.get(b)
        if hit is not None:
            self._cache.move_to_end(b)
            return hit
        try:
            col = self._images.get_batch(b).column(0)
        except (OSError, pa.ArrowInvalid) as e:
            raise DatasetError(f"{self.path}: record batch {b} is corrupted ({e})") from None
        # Zero-copy view of the decompressed buffer (kept alive by the numpy array).
        width = col.type.byte_width
        data = np.frombuffer(col.buffers()[1], np.uint8, count=len(col) * width, offset=col.offset * width)
        frames = data.reshape(len(col), *frame_shape)
        self._cache[b] = frames
        if len(self._cache) > _CACHED_BATCHES:
            self._cache.popitem(last=False)
        return frames


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and check ``manifest.json``; a missing manifest means the dataset is incomplete."""
    root = Path(path)
    mpath = root / MANIFEST_FILE
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory")
    if not mpath.is_file():
        raise DatasetError(f"{mpath}: missing (not a dataset, or an unfinished one)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{mpath}: unreadable ({e})") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{mpath}: schema_version {version!r}, this reader supports {SCHEMA_VERSION}")
    return manifest


class TrajectoryStore:
    """Random access by (episode, step) into a dataset directory; cheap to pickle (reopens lazily)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._check_sizes()
        self._frame_shape = tuple(self.manifest["spaces"]["image"]["shape"])
        self._load_episode_table()
        self._shards: dict[int, _Shard] = {}
        self._pid = os.getpid()

    # ---- opening ----------------------------------------------------------------------------------
    def _check_sizes(self) -> None:
        problems = file_problems(self.path, self.manifest, hash_files=False)
        if problems:
            raise DatasetError(problems[0])

    def _load_episode_table(self) -> None:
        f = self.path / EPISODES_FILE
        try:
            with pa.memory_map(str(f), "r") as source:
                table = pa.ipc.open_file(source).read_all()
        except (OSError, pa.ArrowInvalid) as e:
            raise DatasetError(f"{f}: cannot read episode table ({e})") from None
        self._ep_shard = table.column("shard").to_numpy()
        self._ep_first = table.column("first_row").to_numpy()
        self._ep_len = table.column("length").to_numpy()
        self._ep_params = table.column("env_params").to_pylist()
        if len(self._ep_len) != self.manifest["num_episodes"]:
            raise DatasetError(
                f"{f}: {len(self._ep_len)} episodes, manifest says {self.manifest['num_episodes']}"
            )

    def _shard(self, index: int) -> _Shard:
        if os.getpid() != self._pid:  # forked DataLoader worker: do not share readers across processes
            self._shards, self._pid = {}, os.getpid()
        shard = self._shards.get(index)
        if shard is None:
            meta = self.manifest["shards"][index]
            shard = _Shard(self.path / meta["file"], meta["num_rows"], self.manifest["batch_rows"])
            self._shards[index] = shard
        return shard

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    # ---- metadata ---------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._ep_len)

    @property
    def env_name(self) -> str:
        return self.manifest["env"]["name"]

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self._frame_shape

    def episode_length(self, i: int) -> int:
        return int(self._ep_len[self._check_episode(i)])

    @property
    def episode_lengths(self) -> np.ndarray:
        return self._ep_len.copy()

    def env_params(self, i: int) -> dict[str, Any]:
        return json.loads(self._ep_params[self._check_episode(i)])

    def _check_episode(self, i: int) -> int:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range [0, {self.num_episodes})")
        return int(i)

    # ---- data -------------------------------------------------------------------------------------
    def _rows(self, i: int, steps: Any) -> tuple[_Shard, np.ndarray]:
        i = self._check_episode(i)
        steps = np.asarray(steps, np.int64).reshape(-1)
        T = int(self._ep_len[i])
        if steps.size and (steps.min() < 0 or steps.max() >= T):
            raise IndexError(f"episode {i}: steps {steps.tolist()} outside [0, {T})")
        return self._shard(int(self._ep_shard[i])), steps + int(self._ep_first[i])

    def frames(self, i: int, steps: Any) -> np.ndarray:
        """uint8 (len(steps), H, W, 3) for episode ``i`` at the given steps (any order, repeats allowed)."""
        shard, rows = self._rows(i, steps)
        out = np.empty((len(rows), *self._frame_shape), np.uint8)
        br = shard.batch_rows
        for j, r in enumerate(rows.tolist()):
            out[j] = shard.image_batch(r // br, self._frame_shape)[r % br]
        return out

    def _numeric(self, key: str, i: int, start: int, stop: int | None) -> np.ndarray:
        T = self.episode_length(i)
        stop = T if stop is None else stop
        if not 0 <= start <= stop <= T:
            raise IndexError(f"episode {i}: range [{start}, {stop}) outside [0, {T}]")
        first = int(self._ep_first[i])
        return self._shard(int(self._ep_shard[i])).numeric()[key][first + start : first + stop].copy()

    def actions(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Env-unit actions (stop - start, d); ``actions[t]`` is applied at frame t."""
        return self._numeric("action", i, start, stop)

    def states(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._numeric("state", i, start, stop)

    def proprio(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._numeric("proprio", i, start, stop)

    def episode(self, i: int) -> dict[str, Any]:
        """Everything stored for episode ``i``."""
        T = self.episode_length(i)
        return {
            "frames": self.frames(i, np.arange(T)),
            "actions": self.actions(i),
            "states": self.states(i),
            "proprio": self.proprio(i),
            "env_params": self.env_params(i),
        }

    # ---- integrity --------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Recompute every file's sha256 and decode every record batch; return the problems found."""
        return verify_dataset(self.path, self.manifest)

"""Writing trajectory datasets (the on-disk format is described in :mod:`dinowm_core.data.store`).

Three layers, so that one process, a multiprocessing pool and Ray tasks share the same code:

* :func:`write_shard` writes a list of episodes to one Arrow IPC file (temp file + rename) and returns a
  :class:`ShardInfo` (lengths, env params, statistics partials, checksum);
* :func:`assemble` turns a directory of finished shards into a dataset: the per-episode table, then
  ``manifest.json`` last (a reader requires the manifest, so a crash before it leaves nothing readable);
* :class:`DatasetWriter` buffers episodes into shards inside a temp directory and renames it into place.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dinowm_core.data.fileio import atomic_write_text, sha256_file  # generate/features import them from here
from dinowm_core.data.normalization import RunningStats
from dinowm_core.data.store import (
    BATCH_ROWS,
    EPISODES_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    DatasetError,
    Episode,
    episode_schema,
    episodes_table_schema,
    shard_name,
)

ZSTD_LEVEL = 3
_NUMERIC = ("action", "state", "proprio")


@dataclass
class ShardInfo:
    """What the assembler needs to know about one finished shard."""

    index: int
    file: str
    sha256: str
    bytes: int
    lengths: list[int]
    env_params: list[dict[str, Any]]
    spaces: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)  # key -> RunningStats.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardInfo:
        return cls(**d)


def episode_spaces(ep: Episode) -> dict[str, Any]:
    return {
        "image": {"shape": list(ep.frames.shape[1:]), "dtype": "uint8"},
        "action": {"shape": [ep.actions.shape[1]], "dtype": str(ep.actions.dtype)},
        "state": {"shape": [ep.states.shape[1]], "dtype": str(ep.states.dtype)},
        "proprio": {"shape": [ep.proprio.shape[1]], "dtype": str(ep.proprio.dtype)},
    }


def _record_batch(schema: pa.Schema, cols: dict[str, np.ndarray], start: int, stop: int) -> pa.RecordBatch:
    """Rows ``[start, stop)`` of the concatenated column arrays as one record batch."""
    n = stop - start
    img_type = schema.field("image").type
    arrays = [
        pa.array(cols["episode"][start:stop], pa.int32()),
        pa.array(cols["step"][start:stop], pa.int32()),
        pa.FixedSizeBinaryArray.from_buffers(
            img_type, n, [None, pa.py_buffer(cols["image"][start:stop].tobytes())]
        ),
    ]
    for k in _NUMERIC:
        flat = np.ascontiguousarray(cols[k][start:stop]).reshape(-1)
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), cols[k].shape[1]))
    return pa.record_batch(arrays, schema=schema)


def write_shard(
    directory: str | Path,
    index: int,
    episodes: Iterable[Episode],
    first_episode: int,
    action_scale: float = 1.0,
    batch_rows: int = BATCH_ROWS,
) -> ShardInfo:
    """Write ``episodes`` (global ids from ``first_episode``) as shard ``index``; atomic via rename.

    ``episodes`` is consumed once, in order, so it may be a stream (the shard writer process compresses each
    episode as it arrives). On any error the temp file is removed and nothing is renamed into place.
    """
    stream = iter(episodes)
    first = next(stream, None)
    if first is None:
        raise ValueError("write_shard: no episodes")
    directory = Path(directory)
    spaces = episode_spaces(first)
    path = directory / shard_name(index)
    tmp = path.with_name(path.name + ".tmp")
    try:
        lengths, env_params, stats = _write_arrow(
            tmp, itertools.chain([first], stream), spaces, first_episode, action_scale, batch_rows
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return ShardInfo(
        index=index,
        file=path.name,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        lengths=lengths,
        env_params=env_params,
        spaces=spaces,
        stats={k: s.to_dict() for k, s in stats.items()},
    )


def _write_arrow(
    path: Path,
    episodes: Iterable[Episode],
    spaces: dict[str, Any],
    first_episode: int,
    action_scale: float,
    batch_rows: int,
) -> tuple[list[int], list[dict[str, Any]], dict[str, RunningStats]]:
    """Write the episodes' rows to ``path``; returns their lengths, env params and column statistics."""
    schema = episode_schema(spaces)
    stats = {k: RunningStats(spaces[k]["shape"][0]) for k in _NUMERIC}
    lengths: list[int] = []
    env_params: list[dict[str, Any]] = []
    options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", ZSTD_LEVEL))
    rest: dict[str, np.ndarray] | None = None  # rows not yet written (fewer than batch_rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
        for j, ep in enumerate(episodes):
            if episode_spaces(ep) != spaces:
                raise DatasetError(
                    f"episode {first_episode + j}: spaces {episode_spaces(ep)} differ from {spaces}"
                )
            T = len(ep.frames)
            new = {
                "episode": np.full(T, first_episode + j, np.int32),
                "step": np.arange(T, dtype=np.int32),
                "image": ep.frames,
                **{k: getattr(ep, _FIELD[k]) for k in _NUMERIC},
            }
            cols = new if rest is None else {k: np.concatenate([rest[k], new[k]]) for k in new}
            stats["action"].update(ep.actions.astype(np.float64) / action_scale)
            stats["state"].update(ep.states)
            stats["proprio"].update(ep.proprio)
            lengths.append(T)
            env_params.append(ep.env_params)
            # Fixed-size batches across episode boundaries: row r of the shard lives in batch r // batch_rows.
            full = len(cols["step"]) // batch_rows * batch_rows
            for start in range(0, full, batch_rows):
                writer.write_batch(_record_batch(schema, cols, start, start + batch_rows))
            rest = {k: v[full:].copy() for k, v in cols.items()}
        if rest is not None and len(rest["step"]):
            writer.write_batch(_record_batch(schema, rest, 0, len(rest["step"])))
    return lengths, env_params, stats


_FIELD = {"action": "actions", "state": "states", "proprio": "proprio"}


def _write_episode_table(directory: Path, shards: list[ShardInfo]) -> None:
    ep, shard, first, length, params = [], [], [], [], []
    n = 0
    for info in shards:
        row = 0
        for T, p in zip(info.lengths, info.env_params, strict=True):
            ep.append(n)
            shard.append(info.index)
            first.append(row)
            length.append(T)
            params.append(json.dumps(p, sort_keys=True))
            row += T
            n += 1
    table = pa.table(
        [pa.array(ep, pa.int32()), pa.array(shard, pa.int32()), pa.array(first, pa.int64()),
         pa.array(length, pa.int32()), pa.array(params, pa.string())],
        schema=episodes_table_schema(),
    )  # fmt: skip
    tmp = directory / (EPISODES_FILE + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, directory / EPISODES_FILE)


def assemble(directory: str | Path, shards: list[ShardInfo], manifest_base: dict[str, Any]) -> dict[str, Any]:
    """Write the episode table and then ``manifest.json`` (last) for the finished ``shards`` in ``directory``.

    ``manifest_base`` provides ``env`` (``name``, ``action_scale``), ``generator`` and optional extras
    (``splits``, ``img_size``...); spaces, statistics, lengths and checksums are filled in here.
    """
    directory = Path(directory)
    shards = sorted(shards, key=lambda s: s.index)
    if not shards:
        raise DatasetError(f"{directory}: no episodes to write")
    if [s.index for s in shards] != list(range(len(shards))):
        raise DatasetError(
            f"{directory}: shard indices {[s.index for s in shards]} are not 0..{len(shards) - 1}"
        )
    spaces = shards[0].spaces
    for s in shards:
        if s.spaces != spaces:
            raise DatasetError(f"{s.file}: spaces {s.spaces} differ from {spaces}")
    _write_episode_table(directory, shards)
    stats = {k: RunningStats(spaces[k]["shape"][0]) for k in _NUMERIC}
    for s in shards:
        for k in _NUMERIC:
            stats[k].merge(RunningStats.from_dict(s.stats[k]))
    files = {s.file: {"sha256": s.sha256, "bytes": s.bytes} for s in shards}
    ep_path = directory / EPISODES_FILE
    files[EPISODES_FILE] = {"sha256": sha256_file(ep_path), "bytes": ep_path.stat().st_size}
    lengths = [T for s in shards for T in s.lengths]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "format": "dinowm-trajectories",
        **manifest_base,
        "img_size": spaces["image"]["shape"][0],
        "spaces": spaces,
        "num_episodes": len(lengths),
        "num_steps": int(sum(lengths)),
        "episode_lengths": lengths,
        "batch_rows": manifest_base.get("batch_rows", BATCH_ROWS),
        "shards": [
            {"file": s.file, "num_episodes": len(s.lengths), "num_rows": sum(s.lengths)} for s in shards
        ],
        "normalization": {
            "note": "over every stored timestep; unbiased std; action stats are of action / env.action_scale",
            **{
                k: {"mean": st.mean.tolist(), "std": st.std.tolist(), "count": st.count}
                for k, st in stats.items()
            },
        },
        "files": files,
    }
    atomic_write_text(directory / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


class DatasetWriter:
    """Buffer episodes into shards inside ``<out_dir>.tmp-<pid>`` and rename it to ``out_dir`` on :meth:`close`.

    ``manifest_base`` must hold ``env: {"name": ..., "action_scale": ...}``; ``generator`` describes the source.
    Use as a context manager: an exception discards the temp directory.
    """

    def __init__(
        self,
        out_dir: str | Path,
        manifest_base: dict[str, Any],
        *,
        episodes_per_shard: int = 50,
        batch_rows: int = BATCH_ROWS,
        overwrite: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        if "env" not in manifest_base or "name" not in manifest_base["env"]:
            raise ValueError("manifest_base must contain env.name")
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} already exists")
        self.manifest_base = {**manifest_base, "batch_rows": batch_rows}
        self.episodes_per_shard = episodes_per_shard
        self.batch_rows = batch_rows
        self.overwrite = overwrite
        self.tmp_dir = self.out_dir.with_name(f"{self.out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        self._pending: list[Episode] = []
        self._shards: list[ShardInfo] = []
        self._num_episodes = 0

    def add_episode(
        self,
        frames: np.ndarray,
        actions: np.ndarray,
        states: np.ndarray,
        proprio: np.ndarray,
        env_params: dict[str, Any] | None = None,
    ) -> int:
        """Add one episode of T steps (``actions[t]`` is applied at ``frames[t]``); returns its id."""
        self._pending.append(Episode.build(frames, actions, states, proprio, env_params))
        self._num_episodes += 1
        if len(self._pending) >= self.episodes_per_shard:
            self._flush()
        return self._num_episodes - 1

    def _flush(self) -> None:
        if not self._pending:
            return
        first = self._num_episodes - len(self._pending)
        scale = float(self.manifest_base["env"].get("action_scale", 1.0))
        self._shards.append(
            write_shard(self.tmp_dir, len(self._shards), self._pending, first, scale, self.batch_rows)
        )
        self._pending = []

    def close(self) -> dict[str, Any]:
        """Finish the last shard, write the manifest and move the dataset into place; returns the manifest."""
        self._flush()
        manifest = assemble(self.tmp_dir, self._shards, self.manifest_base)
        if self.out_dir.exists() and self.overwrite:
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp_dir, self.out_dir)
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif self.tmp_dir.exists():
            self.close()

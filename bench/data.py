"""Data-layer benchmarks; prints one JSON line per measurement.

    python bench/data.py [--episodes 60] [--steps 50] [--envs wall]

* ``store/window_reads_per_s``: random 4-frame windows (frameskip 5) read from a 64 px store, one core;
* ``store/window_items_per_s``: the same through ``WindowDataset`` (normalization + [-1, 1] float tensors);
* ``store/bytes_per_frame``: dataset size on disk / number of frames;
* ``gen/steps_per_s``: generation throughput with 1 and 2 workers, and the raw env step rate (with rendering).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def raw_env_rate(env_name: str, img_size: int, seconds: float = 1.0) -> float:
    """Steps/s of env.step + the random policy alone, for at least ``seconds`` (a few hundred Wall steps
    take ~20 ms, far too short to time on a shared machine)."""
    from dinowm_core.data.policies import RandomPolicy
    from dinowm_core.envs.base import make_env

    env = make_env(env_name, img_size=img_size)
    _, info = env.reset(seed=0)
    policy = RandomPolicy(env, np.random.default_rng(0))
    n, t = 0, time.perf_counter()
    while n < 100 or time.perf_counter() - t < seconds:
        _, _, _, _, info = env.step(policy(info["state"]))
        n += 1
    return n / (time.perf_counter() - t)


def bench_generation(env_name: str, episodes: int, steps: int, img_size: int, root: Path) -> Path:
    from dinowm_core.data.generate import generate

    _emit(
        metric="gen/raw_env_steps_per_s",
        env=env_name,
        img_size=img_size,
        value=round(raw_env_rate(env_name, img_size), 1),
    )
    out = None
    for workers in (1, 2):
        out = root / f"{env_name}-{workers}"
        t = time.perf_counter()
        generate(env_name, episodes, steps, out, seed=0, workers=workers, img_size=img_size, progress=False)
        dt = time.perf_counter() - t
        _emit(metric="gen/steps_per_s", env=env_name, workers=workers, episodes=episodes, steps=steps,
              img_size=img_size, value=round(episodes * steps / dt, 1), seconds=round(dt, 2))  # fmt: skip
    return out


def bench_reads(path: Path, seconds: float = 3.0) -> None:
    import torch

    from dinowm_core.data.store import TrajectoryStore
    from dinowm_core.data.windows import WindowDataset

    torch.set_num_threads(1)
    store = TrajectoryStore(path)
    n_frames, f = 4, 5
    lengths = store.episode_lengths
    rng = np.random.default_rng(0)
    reads, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            i = int(rng.integers(store.num_episodes))
            s = int(rng.integers(lengths[i] - n_frames * f + 1))
            store.frames(i, s + f * np.arange(n_frames))
        reads += 100
    rate = reads / (time.perf_counter() - t0)
    _emit(
        metric="store/window_reads_per_s",
        img_size=store.frame_shape[0],
        frames=n_frames,
        frameskip=f,
        value=round(rate),
    )
    ds = WindowDataset(store, np.arange(store.num_episodes), num_frames=n_frames, frameskip=f, img_size=None)
    items, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            ds[int(rng.integers(len(ds)))]
        items += 100
    _emit(metric="store/window_items_per_s", value=round(items / (time.perf_counter() - t0)))
    size = sum(m["bytes"] for m in store.manifest["files"].values())
    _emit(metric="store/bytes_per_frame", img_size=store.frame_shape[0], raw=int(np.prod(store.frame_shape)),
          value=round(size / store.manifest["num_steps"], 1))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=60)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--envs", nargs="+", default=["wall"])
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dinowm-bench-data-"))
    try:
        paths = [bench_generation(env, args.episodes, args.steps, args.img_size, root) for env in args.envs]
        if hasattr(os, "sched_setaffinity"):  # the read benchmark runs on one core
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        bench_reads(paths[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

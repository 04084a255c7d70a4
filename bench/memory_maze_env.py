"""Memory-Maze costs (needs the memory_maze extra); prints one JSON line per measurement.

    python bench/memory_maze_env.py [--layouts 3x7 9x9] [--seconds 5] [--episodes 4] [--steps 50]

* ``memory_maze/steps_per_s``: ``env.step`` with the 64 px frame (and physics only), explore policy;
* ``memory_maze/reset_s``: reset to a state (a teleport) and, for ``9x9``, a reset that builds a new maze;
* ``memory_maze/gen_steps_per_s``: ``generate`` (explore policy, 64 px) with 1 and 2 workers.
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


def step_rates(layout: str, seconds: float) -> None:
    from dinowm_core.data.policies import ExplorePolicy
    from dinowm_core.envs.memory_maze import MemoryMazeEnv

    t = time.perf_counter()
    env = MemoryMazeEnv(img_size=64, layout=layout)
    _, info = env.reset(seed=0)
    _emit(
        metric="memory_maze/build_and_first_reset_s", layout=layout, value=round(time.perf_counter() - t, 2)
    )
    for render in (True, False):
        policy = ExplorePolicy(env, np.random.default_rng(0))
        state, n, start = info["state"], 0, time.perf_counter()
        while n < 20 or time.perf_counter() - start < seconds:
            action = policy(state)
            if render:
                state = env.step(action)[4]["state"]
            else:
                env._step_dynamics(action)
                state = env.get_state()
            n += 1
        _emit(metric="memory_maze/steps_per_s", layout=layout, img_size=64 if render else None,
              value=round(n / (time.perf_counter() - start), 1), steps=n)  # fmt: skip
    init, _ = env.sample_init_goal(1)
    t, n = time.perf_counter(), 20
    for _ in range(n):
        env.reset(options={"state": init})
    _emit(
        metric="memory_maze/reset_s",
        layout=layout,
        kind="to_state",
        value=round((time.perf_counter() - t) / n, 4),
    )
    if layout == "9x9":
        t, n = time.perf_counter(), 3
        for seed in range(1, n + 1):
            env.reset(seed=seed)
        _emit(
            metric="memory_maze/reset_s",
            layout=layout,
            kind="new_maze",
            value=round((time.perf_counter() - t) / n, 3),
        )
    env.close()


def generation(layout: str, episodes: int, steps: int, root: Path) -> None:
    from dinowm_core.data.generate import generate

    for workers in (1, 2):
        out = root / f"{layout}-{workers}"
        t = time.perf_counter()
        generate("memory_maze", episodes, steps, out, seed=0, workers=workers, img_size=64, policy="explore",
                 env_kwargs={"layout": layout}, progress=False)  # fmt: skip
        dt = time.perf_counter() - t
        _emit(metric="memory_maze/gen_steps_per_s", layout=layout, workers=workers, episodes=episodes, steps=steps,
              value=round(episodes * steps / dt, 1), seconds=round(dt, 1))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", nargs="+", default=["3x7", "9x9"])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    _emit(metric="machine/load_average_1m", value=round(os.getloadavg()[0], 2), cpus=os.cpu_count())
    root = Path(tempfile.mkdtemp(prefix="dinowm-bench-mm-"))
    try:
        for layout in args.layouts:
            step_rates(layout, args.seconds)
        for layout in args.layouts:
            generation(layout, args.episodes, args.steps, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _emit(metric="machine/load_average_1m", value=round(os.getloadavg()[0], 2), cpus=os.cpu_count())


if __name__ == "__main__":
    main()

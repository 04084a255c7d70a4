"""Push throughput of the deformable envs (rope, granular); prints one JSON line per case.

python bench/bench_deformable.py [--pushes 20] [--sizes 64 224]

Pushes start near the object and travel up to 1.5 units in x and z, like a random-action dataset; a push-step
includes the settle phase and the render. ``substeps_per_s`` counts physics steps (5 ms each).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dinowm_core.envs import make_env


def measure(name: str, img_size: int, num_pushes: int) -> dict[str, float | int | str]:
    env = make_env(name, img_size=img_size)
    init, _ = env.sample_init_goal(0)
    rng = np.random.default_rng(0)
    centre = init.reshape(-1, 4)[:, [0, 2]].mean(axis=0)
    starts = centre + rng.uniform(-1.0, 1.0, (num_pushes, 2))
    actions = np.concatenate([starts, starts + rng.uniform(-1.5, 1.5, (num_pushes, 2))], axis=1)
    env.reset(options={"state": init})
    substeps, start = 0, time.perf_counter()
    for action in actions:
        substeps += env.step(action)[4]["substeps"]
    elapsed = time.perf_counter() - start
    env.close()
    return {
        "env": name,
        "img_size": img_size,
        "push_steps_per_s": round(num_pushes / elapsed, 2),
        "substeps_per_s": round(substeps / elapsed, 1),
        "substeps_per_push": round(substeps / num_pushes, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--envs", nargs="+", default=["rope", "granular"])
    args = parser.parse_args()
    for name in args.envs:
        for size in args.sizes:
            print(json.dumps(measure(name, size, args.pushes)), flush=True)


if __name__ == "__main__":
    main()

"""Step+render throughput of the MuJoCo planning envs (PointMaze, Reacher); prints one JSON line per case.

python bench/bench_mujoco_envs.py [--steps 300] [--sizes 64 224]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from dinowm_core.envs import make_env
from dinowm_core.envs.mujoco_render import GL_BACKEND


def steps_per_second(name: str, img_size: int, num_steps: int, render: bool) -> float:
    env = make_env(name, img_size=img_size)
    init, _ = env.sample_init_goal(0)
    actions = np.random.default_rng(0).uniform(-1, 1, (num_steps, env.action_dim))
    env.reset(options={"state": init})
    start = time.perf_counter()
    for action in actions:
        if render:
            env.step(action)
        else:
            env._step_dynamics(action)
    elapsed = time.perf_counter() - start
    env.close()
    return num_steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    args = parser.parse_args()
    for name in ("point_maze", "reacher"):
        physics_only = steps_per_second(name, 64, args.steps * 10, render=False)
        print(
            json.dumps(
                {"env": name, "img_size": None, "steps_per_s": round(physics_only, 1), "render": False}
            )
        )
        for size in args.sizes:
            rate = steps_per_second(name, size, args.steps, render=True)
            record = {"env": name, "img_size": size, "steps_per_s": round(rate, 1), "gl": GL_BACKEND}
            print(json.dumps(record))


if __name__ == "__main__":
    main()

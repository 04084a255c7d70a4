"""Step+render throughput of the 2-D planning envs (Wall, PushT); prints one JSON line per case.

python bench/bench_2d_envs.py [--steps 2000] [--sizes 64 224]

Actions are random: uniform in [-1, 1] for Wall, N(0, 0.2) for PushT (the reference data's action std),
from each env's ``sample_init_goal(0)`` state. A step includes the reward and the rendered frame.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from dinowm_core.envs import make_env

ACTION_SAMPLERS = {
    "wall": lambda rng, n: rng.uniform(-1, 1, (n, 2)),
    "pusht": lambda rng, n: rng.normal(0, 0.2, (n, 2)),
}


def steps_per_second(name: str, img_size: int, num_steps: int, render: bool) -> float:
    env = make_env(name, img_size=img_size)
    init, _ = env.sample_init_goal(0)
    actions = ACTION_SAMPLERS[name](np.random.default_rng(0), num_steps)
    env.reset(options={"state": init})
    start = time.perf_counter()
    for action in actions:
        if render:
            env.step(action)
        else:
            env._step_dynamics(action)
    return num_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    args = parser.parse_args()
    for name in ACTION_SAMPLERS:
        physics_only = steps_per_second(name, 64, args.steps, render=False)
        print(
            json.dumps(
                {"env": name, "img_size": None, "steps_per_s": round(physics_only, 1), "render": False}
            )
        )
        for size in args.sizes:
            rate = steps_per_second(name, size, args.steps, render=True)
            print(json.dumps({"env": name, "img_size": size, "steps_per_s": round(rate, 1), "render": True}))


if __name__ == "__main__":
    main()

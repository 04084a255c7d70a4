"""Environment step rate: physics only and step + render at 64 and 224 px, for every planning env.

Prints one JSON line per (env, image size). A deformable env's step is one whole push (hundreds of substeps).

    python bench/envs.py [--envs wall pusht ...] [--seconds 2] [--sizes 64 224]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from dinowm_core.envs import ENV_IDS, make_env


def rate(name: str, img_size: int, seconds: float, render: bool) -> float:
    env = make_env(name, img_size=img_size)
    init, _ = env.sample_init_goal(0)
    env.reset(options={"state": init})
    rng = np.random.default_rng(0)
    num_actions = getattr(env, "num_actions", None)
    if num_actions is not None:  # a discrete env (four_rooms, memory_maze): an index, shape (1,)

        def sample() -> np.ndarray:
            return np.array([rng.integers(num_actions)], np.int64)
    else:
        low, high = env.action_space.low, env.action_space.high
        low, high = np.where(np.isfinite(low), low, -1.0), np.where(np.isfinite(high), high, 1.0)

        def sample() -> np.ndarray:
            return rng.uniform(low, high)

    n, start = 0, time.perf_counter()
    while True:
        action = sample()
        if render:
            env.step(action)
        else:
            env._step_dynamics(action if action.dtype.kind == "i" else np.asarray(action, np.float64))
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            break
    env.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=list(ENV_IDS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    for name in args.envs:
        try:
            make_env(name, img_size=16).close()
        except ImportError as e:  # an optional extra (memory_maze) that is not installed
            print(json.dumps({"bench": "env_rate", "env": name, "skipped": str(e)}), flush=True)
            continue
        row = {
            "bench": "env_rate",
            "env": name,
            "physics_steps_per_s": round(rate(name, 64, args.seconds, False), 1),
        }
        for size in args.sizes:
            row[f"steps_per_s_{size}px"] = round(rate(name, size, args.seconds, True), 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

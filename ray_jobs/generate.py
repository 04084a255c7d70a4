"""Dataset generation as Ray tasks: one task per shard, the same unit of work as the local pool.

    python -m ray_jobs.generate --env wall --episodes 1000 --steps 100 --out data/wall --seed 0
    ray job submit --working-dir . -- python -m ray_jobs.generate --env wall ... --address auto

Resumable exactly like ``dinowm data generate`` (shards in ``<out>.partial/``); ``out`` must be on storage
that every node can write (a shared filesystem).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dinowm_core.data.generate import GenerationSpec, finalize, generate_shard, prepare
from dinowm_core.data.writer import ShardInfo
from ray_jobs.cluster import connect
from ray_jobs.job_config import RayConfig

log = logging.getLogger(__name__)


def run(spec: GenerationSpec, out: str | Path, *, address: str | None = None, num_cpus: float = 1.0) -> Path:
    """Generate ``spec`` into ``out`` with one Ray task per missing shard."""
    import ray

    partial, todo, done = prepare(spec, out)
    if todo:
        connect(RayConfig(address=address))
        task = ray.remote(
            num_cpus=num_cpus, runtime_env={"env_vars": {"LP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}}
        )(generate_shard)
        pending = [task.remote(spec.to_dict(), s, str(partial)) for s in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            info = ShardInfo.from_dict(ray.get(ready[0]))
            done[info.index] = info
            log.info("shard %d done (%d/%d)", info.index, len(done), spec.num_shards)
    finalize(spec, out, done)
    return Path(out)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m ray_jobs.generate`` (tests/docs parses the documented commands with it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True)
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--policy", default="random")
    p.add_argument("--episodes-per-shard", type=int, default=0)
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or a local cluster)")
    p.add_argument("--cpus-per-task", type=float, default=1.0)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = GenerationSpec(args.env, args.episodes, args.steps, args.seed, args.img_size, args.policy,
                          args.episodes_per_shard)  # fmt: skip
    out = run(spec, args.out, address=args.address, num_cpus=args.cpus_per_task)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()

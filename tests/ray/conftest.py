"""One small Ray cluster for every Ray test (platform notes: explicit CPUs, object store and a short temp dir)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from ray_jobs import cluster
from tests.conftest import TINY
from tests.ray import procs

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if ray.is_initialized():  # another directory's session fixture started it (tests/serving reuses this one)
        yield ray
        return
    before = set(procs.descendants(os.getpid()))
    tmp = tempfile.mkdtemp(prefix="dwr-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    with cluster.embedded_settings():  # loopback only, like the clusters our commands start
        ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=True,
                 dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", _temp_dir=tmp,
                 log_to_driver=True)  # fmt: skip
    yield ray
    # ray.init started gcs, raylet and the workers as descendants of this process. A worker that does not
    # notice its raylet exiting (seen once: a TrainController of an aborted run) would outlive the session,
    # so whatever of that tree still runs shortly after shutdown is ended by PID and reported.
    started = [p for p in procs.descendants(os.getpid()) if p not in before]
    leftovers = cluster.forkserver_dirs()
    ray.shutdown()
    left = procs.wait_gone(started, timeout_s=15)
    if left:
        names = [procs.name(p) for p in left]
        stubborn = procs.stop(left)
        warnings.warn(f"Ray processes outlived ray.shutdown() and were stopped: {names} (SIGKILL: {stubborn})",
                      stacklevel=1)  # fmt: skip
    for path in [*leftovers, tmp]:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def wall_dataset(tmp_path_factory) -> Path:
    """12 random Wall episodes of 25 steps at 64 px (~2 s to generate)."""
    from dinowm_core.data.generate import generate

    out = tmp_path_factory.mktemp("data") / "wall64"
    generate("wall", 12, 25, out, seed=0, img_size=64, progress=False)
    return out


def train_overrides(dataset: Path, out: Path, *extra: str) -> list[str]:
    """The tiny model on 6 episodes: 4 steps per epoch at a global batch of 8."""
    return [*TINY, f"data.path={dataset}", "data.n_rollout=6", "data.num_workers=0", "training.batch_size=8",
            "training.num_val_rollouts=1", "training.val_max_batches=1", "training.num_reconstruct_samples=2",
            "training.log_every_steps=1", f"output_dir={out}", *extra]  # fmt: skip

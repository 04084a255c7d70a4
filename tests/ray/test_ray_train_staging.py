"""Node-local staging in local mode (``ray.num_workers=0``): Ray keeps the reported checkpoint where rank 0
wrote it (nothing is copied to storage), so cleanup must keep exactly that directory and remove the rest.

The 2-worker case (staging removed entirely) is checked on the shared run in test_ray_train_run.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.ray.conftest import train_overrides

pytestmark = pytest.mark.ray


def test_local_mode_keeps_only_the_committed_checkpoint(ray_cluster, wall_dataset, tmp_path):
    from dinowm_core import load_config, load_world_model
    from ray_jobs import train
    from ray_jobs.train_worker import staging_root

    cfg = load_config(train_overrides(wall_dataset, tmp_path, "training.epochs=2", "ray.num_workers=0",
                                      "mlflow.register_model=null"))  # fmt: skip
    outcome = train.run(cfg)
    root = staging_root(outcome.run_name)
    try:
        checkpoint = Path(outcome.checkpoint).resolve()
        assert outcome.metrics["step"] == 8 and checkpoint.name == "epoch0002-step00000008"
        assert checkpoint.is_relative_to(root.resolve())  # Ray's result points into the staging directory
        load_world_model(checkpoint)  # intact: config, weights and normalization all still there
        left = {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_relative_to(checkpoint)}
        assert left == {"rank0", "rank0/checkpoints"}  # no epoch-1 checkpoint, artifacts or other files
    finally:
        shutil.rmtree(root, ignore_errors=True)

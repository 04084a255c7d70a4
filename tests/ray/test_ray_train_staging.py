"""Local mode (``ray.num_workers=0``): Ray keeps the reported checkpoint where the worker wrote it, under node-local
staging; the run moves it into its storage and removes the staging directory.

The 2-worker case (staging removed entirely) is checked on the shared run in test_ray_train_run.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.ray.conftest import train_overrides

pytestmark = pytest.mark.ray


def test_local_mode_moves_the_final_checkpoint_into_storage(ray_cluster, wall_dataset, tmp_path):
    from dinowm_core import load_world_model
    from ray_jobs import train
    from ray_jobs.job_config import load_run_config
    from ray_jobs.train_worker import staging_root

    cfg, job = load_run_config(train_overrides(wall_dataset, tmp_path, "training.epochs=2", "ray.num_workers=0",
                                               "mlflow.register_model=null"))  # fmt: skip
    outcome = train.run(cfg, job)
    root = staging_root(outcome.run_name)
    try:
        checkpoint = Path(outcome.checkpoint)
        assert outcome.metrics["step"] == 8 and checkpoint.name == "epoch0002-step00000008"
        assert checkpoint.parent == Path(outcome.run_dir)  # in the run's storage, not in /tmp
        load_world_model(checkpoint)  # complete: config, weights and normalization
        assert not root.exists()
        assert not list(Path(outcome.run_dir).glob(".*.tmp"))
    finally:
        shutil.rmtree(root, ignore_errors=True)

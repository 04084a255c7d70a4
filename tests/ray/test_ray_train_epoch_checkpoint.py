"""Step checkpoints that fall on epoch ends, with Ray keeping the default number of checkpoints (2 workers).

Each checkpoint must reach Ray once: two registrations of one directory let Ray's pruning of the older one
delete the files of the newer one, and the controller then fails on a missing path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ray.conftest import train_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_step_checkpoints_at_epoch_ends_finish(ray_cluster, wall_dataset, tmp_path):
    from dinowm_core import load_world_model
    from ray_jobs import train
    from ray_jobs.job_config import load_run_config
    from ray_jobs.train_worker import COMMITTED

    # 4 steps per epoch, a checkpoint every 2 steps: steps 4 and 8 end epochs, step 10 is the last (mid-epoch).
    cfg, job = load_run_config(train_overrides(wall_dataset, tmp_path, "training.epochs=3", "training.max_steps=10",
                                               "training.checkpoint_every_steps=2", "ray.num_workers=2",
                                               "mlflow.register_model=null"))  # fmt: skip
    assert job.ray.num_to_keep == 2
    outcome = train.run(cfg, job)

    assert outcome.metrics["step"] == 10 and outcome.metrics["epoch"] == 2 and "val/loss" in outcome.metrics
    checkpoint = Path(outcome.checkpoint)
    assert checkpoint.name == "checkpoint_epoch0002-step00000010"
    load_world_model(checkpoint)
    kept = sorted(p.name for p in Path(outcome.run_dir).glob("checkpoint_epoch*"))
    assert kept == ["checkpoint_epoch0002-step00000008", "checkpoint_epoch0002-step00000010"]
    record = json.loads((Path(outcome.run_dir) / COMMITTED).read_text())
    assert record == {"name": checkpoint.name, "step": 10}

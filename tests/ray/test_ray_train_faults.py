"""Fault tolerance: a worker that raises, or is SIGKILLed, mid-run is restarted and resumes from the last checkpoint.

The fault is a metric callback (``tests.ray.faults.FailOnce``) that makes rank 0 raise or SIGKILL itself once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.ray.conftest import train_overrides
from tests.ray.faults import FailOnce

pytestmark = [pytest.mark.ray, pytest.mark.slow]

OVERRIDES = ("training.epochs=3", "ray.num_workers=2", "ray.max_failures=1", "mlflow.register_model=null")


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, wall_dataset, tmp_path_factory):
    """The final checkpoint of the same run without a fault."""
    from ray_jobs import train
    from ray_jobs.job_config import load_run_config

    out = tmp_path_factory.mktemp("uninterrupted")
    return train.run(*load_run_config(train_overrides(wall_dataset, out, *OVERRIDES))).checkpoint


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_worker_failure_resumes_from_last_checkpoint(
    ray_cluster, wall_dataset, uninterrupted, tmp_path, mode
):
    import torch
    from mlflow import MlflowClient

    from dinowm_core import load_world_model
    from ray_jobs import train
    from ray_jobs.job_config import load_run_config
    from ray_jobs.tracking import tracking_uri

    # 3 epochs x 4 steps; the epoch-1 checkpoint is at step 4, the fault at step 6 (mid epoch 2).
    fault = FailOnce(step=6, mode=mode, marker=str(tmp_path / "fault-fired"))
    cfg, job = load_run_config(train_overrides(wall_dataset, tmp_path, *OVERRIDES))
    outcome = train.run(cfg, job, metric_callbacks=[fault])

    assert outcome.metrics["step"] == 12 and outcome.metrics["epoch"] == 3
    assert Path(fault.marker).exists(), "fault never fired"
    client = MlflowClient(tracking_uri(None, tmp_path))
    epochs = [m.value for m in client.get_metric_history(outcome.mlflow_run_id, "epoch")]
    assert epochs == [1, 2, 3]  # none skipped, none repeated
    # Steps 1-4 ran once; 5-6 ran before the fault and again after resuming from the step-4 checkpoint.
    counts = Counter(m.step for m in client.get_metric_history(outcome.mlflow_run_id, "train/loss"))
    assert counts == {**{s: 1 for s in range(1, 13)}, 5: 2, 6: 2}
    assert client.get_run(outcome.mlflow_run_id).info.status == "FINISHED"
    # Resuming is exact: the same weights as the run that never failed.
    resumed, reference = (
        load_world_model(outcome.checkpoint).state_dict(),
        load_world_model(uninterrupted).state_dict(),
    )
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)

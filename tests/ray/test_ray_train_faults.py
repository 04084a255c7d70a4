"""Fault tolerance: a worker that raises, or is SIGKILLed, mid-run is restarted and resumes from the last checkpoint.

The fault comes from the test-only hook ``DINOWM_TEST_FAIL_AT_STEP=<step>:<raise|kill>`` (rank 0, once per run).
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.ray.conftest import train_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_worker_failure_resumes_from_last_checkpoint(ray_cluster, wall_dataset, tmp_path, monkeypatch, mode):
    from mlflow import MlflowClient

    from dinowm_core import load_config
    from ray_jobs import train
    from ray_jobs.tracking import tracking_uri
    from ray_jobs.train_worker import FAULT_ENV

    # 3 epochs x 4 steps; the epoch-1 checkpoint is at step 4, the fault at step 6 (mid epoch 2).
    monkeypatch.setenv(FAULT_ENV, f"6:{mode}")
    cfg = load_config(train_overrides(wall_dataset, tmp_path, "training.epochs=3", "ray.num_workers=2",
                                      "ray.max_failures=1", "mlflow.register_model=null"))  # fmt: skip
    outcome = train.run(cfg)

    assert outcome.metrics["step"] == 12 and outcome.metrics["epoch"] == 3
    assert list((tmp_path / "ray_results" / outcome.run_name).glob(".dinowm-test-fault-*")), (
        "fault never fired"
    )
    client = MlflowClient(tracking_uri(None, tmp_path))
    epochs = [m.value for m in client.get_metric_history(outcome.mlflow_run_id, "epoch")]
    assert epochs == [1, 2, 3]  # none skipped, none repeated
    # Steps 1-4 ran once; 5-6 ran before the fault and again after resuming from the step-4 checkpoint.
    counts = Counter(m.step for m in client.get_metric_history(outcome.mlflow_run_id, "train/loss"))
    assert counts == {**{s: 1 for s in range(1, 13)}, 5: 2, 6: 2}
    assert client.get_run(outcome.mlflow_run_id).info.status == "FINISHED"

"""``dinowm train resume=<run>`` continues a run from its name alone; a failed attempt to continue a FINISHED run
never rewrites its record; a worker failure is one line for the user and a traceback in the run's log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ray.conftest import train_overrides
from tests.ray.faults import FailAlways

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def finished(ray_cluster, wall_dataset, tmp_path_factory):
    """A FINISHED one-epoch run (4 steps) trained into ``<home>/outputs``, as ``dinowm train`` run from ``home``."""
    from ray_jobs import train
    from ray_jobs.job_config import load_run_config

    home = tmp_path_factory.mktemp("home")
    cfg, job = load_run_config(train_overrides(wall_dataset, home / "outputs", "training.epochs=1",
                                               "mlflow.register_model=null"))  # fmt: skip
    return train.run(cfg, job), home


def _run(home):
    from mlflow import MlflowClient

    from ray_jobs.tracking import tracking_uri

    client = MlflowClient(tracking_uri(None, home / "outputs"))
    return client, lambda run_id: client.get_run(run_id)


def test_resume_by_name_alone_continues_the_run(finished, capsys, monkeypatch):
    from ray_jobs import train

    outcome, home = finished
    monkeypatch.chdir(home)  # the run is found under ./outputs, its config comes from the run itself
    code = train.main([f"resume={outcome.run_name}", "training.epochs=2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    resumed = json.loads(captured.out.strip().splitlines()[-1])
    assert resumed["run_name"] == outcome.run_name and resumed["mlflow_run_id"] == outcome.mlflow_run_id
    assert resumed["checkpoint"].endswith("step00000008")  # epoch 2 of 4 steps, after the first 4
    client, get = _run(home)
    assert get(outcome.mlflow_run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(outcome.mlflow_run_id, "train/loss"))
    assert steps == list(range(1, 9))  # one history, no step trained twice


def test_resume_refuses_overrides_that_change_the_model(finished, capsys, monkeypatch):
    from ray_jobs import train

    outcome, home = finished
    monkeypatch.chdir(home)
    code = train.main([f"resume={outcome.run_name}", "predictor.depth=1", "training.epochs=3"])
    err = capsys.readouterr().err
    assert code == 2 and "changes the model (predictor.depth 2 -> 1)" in err, err
    assert _run(home)[1](outcome.mlflow_run_id).info.status == "FINISHED"


def test_a_failed_resume_keeps_the_finished_record(finished, tmp_path):
    from ray_jobs import train
    from ray_jobs.train_preflight import RunPlan, resume_config, storage_root

    outcome, home = finished
    cfg, job = resume_config(outcome.run_dir, ["training.epochs=5"])
    with pytest.raises(train.TrainFailed) as failed:
        train.run(cfg, job, resume=outcome.run_dir, metric_callbacks=[FailAlways("no disk left (test)")])
    e = failed.value
    assert e.cause == "RuntimeError: no disk left (test)" and "\n" not in e.cause
    log = Path(e.log_file).read_text()
    assert "Traceback" in log and "faults.py" in log  # the whole story stays in the run's log
    assert e.log_file.startswith(RunPlan(outcome.run_name, storage_root(cfg, job.ray)).run_dir)
    run = _run(home)[1](outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dinowm.failed_attempt"].startswith("FAILED")


def test_a_worker_failure_is_one_line(monkeypatch, capsys, tmp_path):
    from ray_jobs import train

    def fail(*args, **kwargs):
        raise train.TrainFailed("wall-x", str(tmp_path / "wall-x"), "ValueError: bad thing", "/r/error.log")

    monkeypatch.setattr(train, "run", fail)
    monkeypatch.setattr(train, "load_run_config", lambda overrides: (None, None))
    code = train.main(["env=wall"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[0] == "error: training failed in a worker: ValueError: bad thing; traceback in /r/error.log"
    assert err[1].endswith(f"dinowm train resume={tmp_path / 'wall-x'}")


def test_resume_takes_an_mlflow_checkpoint_reference(finished, capsys, monkeypatch):
    """``resume=runs:/ID/checkpoint`` is the run's logged checkpoint: its config is the base, as for a directory."""
    from ray_jobs import train

    outcome, home = finished
    monkeypatch.chdir(home)
    code = train.main([f"resume=runs:/{outcome.mlflow_run_id}/checkpoint", "predictor.depth=1"])
    err = capsys.readouterr().err
    assert code == 2 and "changes the model (predictor.depth 2 -> 1)" in err, err
    assert list((home / "outputs" / "models").iterdir())  # downloaded once into the output dir's cache
    code = train.main(["resume=runs:/0123456789abcdef/checkpoint"])
    assert code == 2 and "error:" in capsys.readouterr().err

"""A 2-worker CPU (gloo DDP) Train V2 run: it learns, its checkpoint loads, and MLflow holds the whole record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.ray.conftest import train_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(ray_cluster, wall_dataset, tmp_path_factory):
    from ray_jobs import train
    from ray_jobs.job_config import load_run_config

    out = tmp_path_factory.mktemp("run")
    cfg, job = load_run_config(train_overrides(wall_dataset, out, "training.epochs=4",
                                               "training.val_at_start=true", "ray.num_workers=2"))  # fmt: skip
    return train.run(cfg, job), out


def _client(out: Path):
    from mlflow import MlflowClient

    from ray_jobs.tracking import tracking_uri

    uri = tracking_uri(None, out)
    return MlflowClient(uri), uri


def test_two_workers_reduce_validation_loss(trained):
    outcome, out = trained
    client, _ = _client(out)
    history = sorted(client.get_metric_history(outcome.mlflow_run_id, "val/loss"), key=lambda m: m.step)
    assert history[0].step == 0 and history[-1].step == 16  # 4 epochs x (6*... windows / batch 8) = 16 steps
    assert history[-1].value < 0.85 * history[0].value, [(m.step, m.value) for m in history]
    assert outcome.metrics["epoch"] == 4 and outcome.metrics["step"] == 16


def test_checkpoint_loads_and_rolls_out(trained):
    from dinowm_core import load_world_model

    outcome, _ = trained
    wm = load_world_model(outcome.checkpoint).eval()
    obs = {"visual": torch.zeros(1, 3, 3, 64, 64), "proprio": torch.zeros(1, 3, wm.cfg.env.proprio_dim)}
    with torch.no_grad():
        z, _ = wm.rollout(obs, torch.zeros(1, 5, wm.cfg.action_dim))
    assert z["visual"].shape[1] >= 5 and torch.isfinite(z["visual"]).all()  # context + 5 imagined frames
    frames, _ = wm.decode_visual(z["visual"])
    assert frames.shape[-2:] == (64, 64) and torch.isfinite(frames).all()


def test_staging_directories_are_removed(trained):
    """Each rank's node-local checkpoints, artifacts and resume copies go; the committed checkpoint stays."""
    from ray_jobs.train_worker import staging_root

    outcome, out = trained
    assert not staging_root(outcome.run_name).exists()
    assert Path(outcome.checkpoint).is_relative_to(out / "ray_results" / outcome.run_name)
    assert (Path(outcome.checkpoint) / "model.safetensors").is_file()


def test_mlflow_run_record(trained):
    outcome, out = trained
    client, _ = _client(out)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((out / "mlflow" / "artifacts").as_uri())
    assert run.data.params["training.batch_size"] == "8" and run.data.params["ray.num_workers"] == "2"
    assert run.data.tags["env"] == "wall" and run.data.tags["dinowm.run_name"] == outcome.run_name
    assert len(run.data.tags["dataset_manifest_sha256"]) == 16
    steps = [m.step for m in client.get_metric_history(outcome.mlflow_run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 17))  # every step once (log_every_steps=1)
    epochs = [m.value for m in client.get_metric_history(outcome.mlflow_run_id, "epoch")]
    assert epochs == [1, 2, 3, 4]
    images = [f.path for f in client.list_artifacts(outcome.mlflow_run_id, "artifacts")]
    assert any(p.endswith("_reconstruction.png") for p in images), images
    ckpt = {Path(f.path).name for f in client.list_artifacts(outcome.mlflow_run_id, "checkpoint")}
    assert {"config.json", "model.safetensors", "train_state.pt"} <= ckpt
    # The run records where it ran (params above); the checkpoint records the model and its training only.
    written = json.loads((Path(outcome.checkpoint) / "config.json").read_text())
    assert not {"ray", "mlflow"} & set(written) and written["training"]["batch_size"] == 8


def test_registered_version_resolves_to_loadable_checkpoint(trained, tmp_path):
    from dinowm_core import load_world_model
    from ray_jobs.runs import local_checkpoint

    outcome, out = trained
    _, uri = _client(out)
    for ref in (f"models:/dinowm-world-model/{outcome.model_version}", "dinowm-world-model"):
        path = local_checkpoint(ref, uri, cache_dir=tmp_path)
        resolved = load_world_model(path).state_dict()
        original = load_world_model(outcome.checkpoint).state_dict()
        assert all(torch.equal(resolved[k], original[k]) for k in original)


def test_runs_cli(trained):
    from ray_jobs.cli import app

    outcome, out = trained
    listed = CliRunner().invoke(app, ["runs", "list", "-o", str(out), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert rows[0]["name"] == outcome.run_name and rows[0]["status"] == "FINISHED"
    assert rows[0]["checkpoint"] == f"runs:/{outcome.mlflow_run_id}/checkpoint"
    shown = CliRunner().invoke(app, ["runs", "show", outcome.run_name, "-o", str(out)])
    assert shown.exit_code == 0 and json.loads(shown.output)["metrics"]["step"] == 16
    missing = CliRunner().invoke(app, ["runs", "show", "no-such-run", "-o", str(out)])
    assert missing.exit_code == 2


def test_the_registered_version_is_served_by_its_models_uri(trained, tmp_path):
    """What `dinowm train` registers is what the planning service loads by ``models:/NAME/VERSION``."""
    from serving.schemas import PlanRequest
    from serving.service import PlanningService
    from tests.serving.serving_helpers import obs

    outcome, out = trained
    _, uri = _client(out)
    ref = f"models:/dinowm-world-model/{outcome.model_version}"
    service = PlanningService.load(ref, tracking_uri=uri, cache_dir=tmp_path)
    assert service.info().source == ref and service.info().env == "wall"
    request = PlanRequest.model_validate({"obs": obs(0, proprio=[10.0, 20.0]), "goal": obs(1, proprio=[30.0, 40.0]),
                                          "planner": {"num_samples": 8, "topk": 2, "opt_steps": 1}})  # fmt: skip
    (response,) = service.plan([request])
    assert len(response.actions) > 0 and len(response.actions[0]) == 2


def test_a_memory_predictor_trains_on_sequences_with_two_ddp_workers(ray_cluster, wall_dataset, tmp_path):
    """Each sample's memory is its own under DDP: sequences of 5 frames, two windows each, 2 Ray Train workers."""
    from ray_jobs import train
    from ray_jobs.job_config import load_run_config

    cfg, job = load_run_config(train_overrides(
        wall_dataset, tmp_path, "predictor=mac_mem_vit", "predictor.depth=2", "predictor.heads=2",
        "predictor.dim_head=8", "predictor.mlp_dim=32", "data.sequence_length=5", "training.window_stride=1",
        "data.n_rollout=12", "training.batch_size=4", "training.epochs=1", "ray.num_workers=2",
        "mlflow.register_model=null"))  # fmt: skip
    outcome = train.run(cfg, job)
    assert outcome.metrics["train/windows"] == 2 and outcome.metrics["step"] > 0
    assert torch.isfinite(torch.tensor(outcome.metrics["val/loss"]))
    assert (Path(outcome.checkpoint) / "model.safetensors").is_file()

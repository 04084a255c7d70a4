"""`dinowm memory-eval` through Ray env actors on a tiny four_rooms checkpoint: the same numbers as in-process,
a results JSON with episode counts and intervals, an MLflow run; bad input exits 2 naming the key."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dinowm_core import build_world_model, load_config, save_world_model

pytestmark = pytest.mark.ray

MODEL = ["env=four_rooms", "encoder=dino_tiny", "decoder=none", "img_size=64", "frameskip=1", "num_hist=3",
         "predictor=vit_small"]  # fmt: skip
GRID = ["memory_eval.tasks=[object_recall,object_goal,loop_closure]", "memory_eval.num_objects=[2]",
        "memory_eval.horizons=[6]", "memory_eval.num_videos=1", "memory_eval.num_actors=2", "memory_eval.goal_budget=16",
        "planner.horizon=2", "planner.cem.num_samples=8", "planner.cem.topk=2", "planner.cem.opt_steps=1"]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_world_model(
        build_world_model(load_config(MODEL)).eval(), tmp_path_factory.mktemp("m") / "ckpt"
    )


def test_ray_actors_match_in_process(ray_cluster, ckpt, tmp_path):
    from ray_jobs.memory_eval import run

    common = [*GRID, f"output_dir={tmp_path}"]
    remote, out = run(str(ckpt), common, use_ray=True, out=tmp_path / "ray", episodes=2, progress=False)
    local, _ = run(str(ckpt), common, use_ray=False, out=tmp_path / "local", episodes=2, progress=False)
    assert remote["episodes"] == local["episodes"] and len(remote["episodes"]) == 6
    data = json.loads((out / "results.json").read_text())
    recall = data["tasks"]["object_recall"]["pooled"]
    assert recall["n"] == 2 and recall["chance"] == 0.5 and len(recall["ci95"]) == 2
    assert data["tasks"]["loop_closure"]["pooled"]["err_revisit"]["n"] == 2
    goal = data["tasks"]["object_goal"]["pooled"]  # planned in the env: success, SPL, steps
    assert goal["n"] == 2 and "chance" not in goal and goal["steps"]["mean"] <= 16
    assert (out / "accuracy_by_task.png").is_file() and len(data["videos"]) == 3
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()


def test_cli_bad_input_exits_2(tmp_path):
    from ray_jobs.cli import app

    wall = save_world_model(
        build_world_model(load_config([*MODEL[1:], "env=wall", "frameskip=5"])), tmp_path / "w"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["memory-eval", str(wall), "--in-process", f"output_dir={tmp_path}"])
    assert res.exit_code == 2 and "env.name" in res.output
    fr = save_world_model(build_world_model(load_config(MODEL)), tmp_path / "fr")
    res = runner.invoke(app, ["memory-eval", str(fr), "--in-process", "memory_eval.tasks=[telepathy]"])
    assert res.exit_code == 2 and "memory_eval.tasks" in res.output

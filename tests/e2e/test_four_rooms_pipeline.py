"""four_rooms end to end, in-process and tiny: generate (BFS policy) -> fit a few steps -> load the checkpoint ->
evaluate discrete MPC through the env's planning preset. The CLI runs the same calls (``dinowm data generate``,
``dinowm train``, ``dinowm plan``), behind Ray and MLflow; README "four_rooms" lists the commands."""

from __future__ import annotations

import json

import pytest
import torch

from dinowm_core import load_config
from dinowm_core.data.generate import generate
from dinowm_core.evaluation.loop import evaluate
from dinowm_core.presets import plan_config
from dinowm_core.training.checkpoint import load_config_from_checkpoint, load_world_model
from dinowm_core.training.hooks import TrainHooks
from dinowm_core.training.loop import fit

pytest.importorskip("minigrid")

MODEL = ["env=four_rooms", "encoder=dino_tiny", "encoder.pretrained=false", "predictor=vit_small",
         "decoder=none", "img_size=32", "frameskip=2", "num_hist=1"]  # fmt: skip


def test_generate_train_and_plan_with_discrete_mpc(tmp_path):
    torch.manual_seed(0)
    data = generate(
        "four_rooms", 8, 16, tmp_path / "data", policy="four_rooms_bfs", img_size=32, progress=False
    )
    cfg = load_config([*MODEL, f"data.path={data}", "data.num_workers=0", "training.batch_size=4",
                       "training.max_steps=2", "training.num_val_rollouts=1", "training.val_max_batches=1",
                       "training.num_reconstruct_samples=0", "training.amp=off", f"output_dir={tmp_path}"])  # fmt: skip
    result = fit(cfg, TrainHooks(device="cpu", run_dir=tmp_path / "run"))
    assert result.steps == 2 and result.checkpoint is not None
    norm = json.loads((result.checkpoint / "normalization.json").read_text())
    assert norm["num_actions"] == 3
    wm = load_world_model(result.checkpoint)
    assert wm.action_encoder.in_dim == 6  # frameskip 2 x one-hot 3
    plan_cfg = plan_config(load_config_from_checkpoint(result.checkpoint), [
        "planner.horizon=2", "planner.cem.num_samples=6", "planner.cem.topk=2", "planner.cem.opt_steps=1",
        "eval.device=cpu", "eval.n_plot_samples=1", "eval.n_evals=2", "eval.budget=4", f"data.path={data}",
    ])  # fmt: skip
    assert plan_cfg.planner.name == "mpc_cem_discrete"  # from conf/plan/four_rooms.yaml
    res = evaluate(wm, plan_cfg, out_dir=tmp_path / "plan")
    episodes = res.episodes()
    assert len(episodes) == 2 and all(m.env_steps == 4 and m.min_distance >= 0 for m in episodes)
    assert res.videos

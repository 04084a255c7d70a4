"""Ray env actors give the same per-episode results as the in-process evaluation."""

from __future__ import annotations

import json

import pytest

from dinowm_core.planning.evaluation import evaluate
from tests.planning.eval_helpers import tiny_cfg, tiny_checkpoint, tiny_wm

pytestmark = pytest.mark.ray

KEYS = ("index", "episode_seed", "success", "success_any_step", "distance", "min_distance", "env_steps",
        "plan_calls", "div_visual_emb", "div_proprio_emb")  # fmt: skip


def _episodes(result):
    return {s: [{k: m[k] for k in KEYS} for m in eps] for s, eps in result.per_seed.items()}


def test_four_env_actors_match_in_process(ray_cluster, tmp_path):
    from ray_jobs.evaluate import evaluate_on_ray

    cfg = tiny_cfg("eval.n_evals=6", "eval.budget=30", "eval.seeds=[1,2]", "eval.num_actors=4",
                   "eval.n_plot_samples=1")  # fmt: skip
    wm = tiny_wm(cfg)
    local = evaluate(wm, cfg)
    remote = evaluate_on_ray(None, cfg, wm=wm, out_dir=tmp_path)
    assert _episodes(remote) == _episodes(local)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["pooled"]["n"] == 12 and len(data["videos"]) == 2
    assert (tmp_path / data["videos"][0]).stat().st_size > 0


def test_planner_actor_matches_in_process(ray_cluster, tmp_path):
    from ray_jobs.evaluate import evaluate_on_ray

    cfg = tiny_cfg("eval.n_evals=3", "eval.budget=20", "eval.seeds=[3]", "eval.num_actors=2")
    ckpt = tiny_checkpoint(tmp_path, cfg)
    from dinowm_core import load_world_model

    local = evaluate(load_world_model(ckpt), cfg)
    remote = evaluate_on_ray(ckpt, cfg, planner="actor", planner_resources={"num_cpus": 0.5})
    assert _episodes(remote) == _episodes(local)

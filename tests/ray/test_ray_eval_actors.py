"""Ray env actors give the same per-episode results as the in-process evaluation."""

from __future__ import annotations

import json

import pytest

from dinowm_core.evaluation.loop import evaluate
from tests.evaluation.eval_helpers import tiny_cfg, tiny_checkpoint, tiny_wm

pytestmark = pytest.mark.ray

KEYS = ("index", "episode_seed", "success", "success_any_step", "distance", "min_distance", "env_steps",
        "plan_calls", "div_visual_emb", "div_proprio_emb")  # fmt: skip


def _episodes(result):
    return {s: [{k: m.to_dict()[k] for k in KEYS} for m in eps] for s, eps in result.per_seed.items()}


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


def test_env_actor_count_reserves_the_planner():
    from ray_jobs.evaluate import env_actor_count, planner_demand

    two_cpus = {"CPU": 2.0, "memory": 1e9}
    assert planner_demand({}) == {"CPU": 1.0} and planner_demand({"num_gpus": 1}) == {"CPU": 1.0, "GPU": 1.0}
    assert env_actor_count(6, None, 0.25, two_cpus) == 6  # nothing reserved: one actor per episode fits
    assert env_actor_count(6, None, 0.25, two_cpus, planner_demand({})) == 4  # 1 CPU left for env actors
    assert env_actor_count(2, None, 1.0, two_cpus, planner_demand({})) == 1
    with pytest.raises(ValueError, match=r"planner actor \(CPU 1\).*CPU 2.5 > 2"):
        env_actor_count(2, None, 1.5, two_cpus, planner_demand({}))
    with pytest.raises(ValueError, match="GPU 1 > 0"):
        env_actor_count(2, None, 0.25, two_cpus, planner_demand({"num_gpus": 1}))


@pytest.mark.timeout(120, method="thread")  # a regression waits forever in ray.get: end the run instead
def test_planner_actor_gets_its_cpu_when_env_actors_are_sized_to_the_cluster(ray_cluster, tmp_path):
    """`dinowm plan --ray --planner-actor` without eval.num_actors on a 2-CPU cluster: env actors of one CPU
    each would take both CPUs and leave the planner actor (1 CPU) unplaceable."""
    from dinowm_core import load_world_model
    from ray_jobs.evaluate import evaluate_on_ray

    cfg = tiny_cfg("eval.n_evals=2", "eval.budget=10", "eval.seeds=[0]")
    assert cfg.eval.num_actors is None
    ckpt = tiny_checkpoint(tmp_path, cfg)
    remote = evaluate_on_ray(ckpt, cfg, planner="actor", cpus_per_actor=1.0)
    assert _episodes(remote) == _episodes(evaluate(load_world_model(ckpt), cfg))


def test_cluster_too_small_for_env_actor_and_planner_fails_clearly(ray_cluster, tmp_path):
    from ray_jobs.evaluate import evaluate_on_ray

    cfg = tiny_cfg("eval.n_evals=2", "eval.budget=10", "eval.seeds=[0]")
    with pytest.raises(ValueError, match="cannot hold one env actor"):
        evaluate_on_ray(tmp_path / "unused", cfg, planner="actor", cpus_per_actor=1.5)

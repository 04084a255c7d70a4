"""The clients against the Serve app (tests/serving/conftest.py): PlanningClient's verbs and errors over real HTTP,
and evaluations through the service (driver-side ServicePolicy, ServiceEnvActors over HTTP and through a deployment
handle, `dinowm plan --serve-url`) with the in-process evaluation's per-episode results."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tests.serving.test_serving_env_actors import episodes

pytestmark = [pytest.mark.ray, pytest.mark.serving, pytest.mark.slow]

# ---- against the Serve app: over HTTP, in env actors (URL and deployment handle), and `dinowm plan` --------

EVAL = ("eval.n_evals=3", "eval.budget=20", "eval.seeds=[1]", "eval.n_plot_samples=1")


@pytest.fixture(scope="module")
def app(serve_url, tiny_ckpt):
    from ray import serve

    from tests.serving.conftest import run_app

    url = run_app({"checkpoint": str(tiny_ckpt), "num_cpus": 0.5, "max_batch_size": 8, "batch_wait_s": 0.05},
                  "envactors", "/envactors", serve_url)  # fmt: skip
    yield url
    serve.delete("envactors")


def env_obs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"visual": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "proprio": rng.normal(size=2)}


def test_client_verbs_and_errors_over_http(app):
    import asyncio

    from serving.client import AsyncPlanningClient, PlanningClient, ServiceError, decode_visual

    with PlanningClient(app) as c, PlanningClient(app, image_format="png") as png:
        info = c.models()
        assert (info.env, info.frameskip, info.proprio_dim) == ("wall", 5, 2) and c.readyz()
        assert c.healthz() == {"status": "ok"}
        planner = {"name": "cem", "horizon": 2, "num_samples": 8, "topk": 2, "opt_steps": 1}
        raw = c.plan(env_obs(0), env_obs(1), planner, seed=3)
        assert raw.n_steps == 10 and np.asarray(raw.actions).shape == (10, 2) and raw.request_id
        assert png.plan(env_obs(0), env_obs(1), planner, seed=3).actions == raw.actions  # PNG is lossless
        session = c.create_session(env_obs(1), {**planner, "name": "mpc_cem", "n_taken_actions": 1}, seed=3)
        assert c.act(session.session_id, env_obs(0)).step == 1
        c.delete_session(session.session_id)
        with pytest.raises(ServiceError) as e:
            c.act(session.session_id, env_obs(0))
        assert e.value.status == 404
        with pytest.raises(ServiceError) as e:
            c.plan({**env_obs(0), "proprio": np.zeros(3)}, env_obs(1))
        assert (e.value.status, e.value.field) == (422, "obs.proprio") and "2" in e.value.detail
        with pytest.raises(ServiceError) as e:
            c.create_session(env_obs(1), planner)
        assert (e.value.status, e.value.field) == (422, "planner.name")
        roll = c.rollout(env_obs(0), np.zeros((10, 2)))
        assert roll.num_frames == 3 and [decode_visual(f).shape for f in roll.frames] == [(64, 64, 3)] * 3

    async def together():
        async with AsyncPlanningClient(app) as ac:
            return await asyncio.gather(*[ac.plan(env_obs(i), env_obs(9), planner, seed=i) for i in range(4)])

    out = asyncio.run(together())
    assert max(r.batch_size for r in out) > 1 and out[3].actions != out[0].actions


@pytest.fixture(scope="module")
def in_process(tiny_ckpt):
    from dinowm_core import load_world_model
    from dinowm_core.evaluation.loop import evaluate
    from tests.evaluation.eval_helpers import tiny_cfg

    cfg = tiny_cfg(*EVAL)
    wm = load_world_model(tiny_ckpt)
    return cfg, wm, evaluate(wm, cfg)


def test_http_evaluation_matches_in_process(app, in_process, tiny_ckpt, caplog):
    from dinowm_core.evaluation.loop import evaluate
    from ray_jobs.evaluate import evaluate_on_ray
    from serving.env_actor import evaluation_policy

    cfg, wm, local = in_process
    caplog.set_level(logging.WARNING, "serving.env_actor")
    policy = evaluation_policy(app, cfg, checkpoint=tiny_ckpt)
    try:
        remote = evaluate(wm, cfg, policy=policy)
        sizes = policy.batch_sizes
    finally:
        policy.close()
    assert episodes(remote) == episodes(local)
    assert max(sizes) > 1  # the episodes' act requests shared planner calls
    policy = evaluation_policy(app, cfg, checkpoint=tiny_ckpt)
    try:  # `dinowm plan --ray --serve-url`: the envs in Ray env actors, the plans from the service
        on_ray = evaluate_on_ray(tiny_ckpt, cfg, policy=policy)
    finally:
        policy.close()
    assert episodes(on_ray) == episodes(local)
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.env_actor"]
    assert warnings == []  # the service has this checkpoint and its planner defaults


def test_service_env_actors_match_in_process_over_http_and_a_handle(app, in_process, tmp_path):
    from ray import serve

    from dinowm_core.evaluation.adapter import ModelAdapter
    from serving.env_actor import evaluate_with_env_actors

    cfg, wm, local = in_process
    imaginer = ModelAdapter(wm)
    over_http = evaluate_with_env_actors(cfg, app, num_actors=2, imaginer=imaginer, out_dir=tmp_path)
    assert episodes(over_http) == episodes(local)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["pooled"]["n"] == 3 and len(data["videos"]) == 1 and (tmp_path / data["videos"][0]).is_file()
    handle = serve.get_app_handle("envactors")
    through_handle = evaluate_with_env_actors(cfg, handle, num_actors=2, imaginer=imaginer)
    assert episodes(through_handle) == episodes(local)


def _untimed(x):
    """results.json without the wall-clock fields."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if "plan_s" not in k and "plan_seconds" not in k}
    return [_untimed(v) for v in x] if isinstance(x, list) else x


def test_dinowm_plan_serve_url_writes_the_in_process_results(app, tiny_ckpt, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ray_jobs.cli import app as cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = [str(tiny_ckpt), "env=wall", "planner=mpc_cem", "planner.cem.num_samples=8", "planner.cem.topk=2",
            "planner.cem.opt_steps=1", "n_evals=2", "budget=10", "seeds=[0]",
            "n_plot_samples=0", f"output_dir={tmp_path}", "--json", "--no-ray"]  # fmt: skip
    runs = {}
    for name, extra in (("local", []), ("served", ["--serve-url", app])):
        res = CliRunner().invoke(cli, ["plan", *args, "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
        assert json.loads(res.stdout) == runs[name]
    assert _untimed(runs["served"]) == _untimed(runs["local"])
    assert runs["served"]["pooled"]["n"] == 2

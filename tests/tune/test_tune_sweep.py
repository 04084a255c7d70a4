"""Sweeps on the session's Ray cluster: a 4-trial training sweep with ASHA on the tiny Wall model (one trial is
stopped early, 4 MLflow runs nest under the sweep's, the best checkpoint loads, plans and serves), then a
planner sweep on that checkpoint (each setting's success with its interval; the best settings exported)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ray_jobs import tracking
from ray_jobs.tune import SWEEP_FILE, run_sweep
from ray_jobs.tune_report import STOPPED_EARLY, TERMINATED, read_results
from tests.conftest import TINY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = ["data.num_workers=0", "data.n_rollout=6", "training.batch_size=8", "training.num_val_rollouts=1",
         "training.val_max_batches=1", "training.num_reconstruct_samples=2", "training.progress_every_s=60"]  # fmt: skip


def _space(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def train_sweep(ray_cluster, wall_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    # Two learning rates that learn and two that cannot move in one epoch: whichever order the trials reach
    # the first rung in, the last two are below its median and ASHA stops them.
    space = _space(root / "lr.yaml", """
        kind: train
        metric: val/loss
        base: {training.epochs: 4}
        scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
        params:
          training.predictor_lr: {grid: [3.0e-3, 1.0e-3, 1.0e-7, 1.0e-8]}
          training.decoder_lr: {grid: [1.0e-3]}
    """)  # fmt: skip
    out = root / "out"
    args = [
        *TINY,
        *SMALL,
        f"data.path={wall_dataset}",
        f"output_dir={out}",
        "mlflow.register_model=tune-test",
        "ray.cpus_per_worker=0.95",
    ]  # two 1-worker trials and their drivers fit the 2-CPU test cluster
    outcome = run_sweep(str(space), args, max_concurrent=2)
    return outcome, out


def test_asha_stops_a_trial_early_and_the_table_says_so(train_sweep):
    outcome, _ = train_sweep
    by_lr = {r.params["training.predictor_lr"]: r for r in outcome.records}
    assert len(outcome.records) == 4
    assert {by_lr[1e-7].status, by_lr[1e-8].status} == {STOPPED_EARLY}
    assert by_lr[1e-7].iterations < 4 and by_lr[1e-8].iterations < 4
    assert any(r.status == TERMINATED and r.iterations == 4 for r in outcome.records)
    assert outcome.best.params["training.predictor_lr"] in (3e-3, 1e-3)
    assert STOPPED_EARLY in outcome.table and f"{outcome.best.trial_id}*" in outcome.table
    # Each trial's curve is its validation loss per step; the files say what the table says.
    completed = next(r for r in outcome.records if r.status == TERMINATED)
    assert [x for x, _ in completed.history] == [4.0, 8.0, 12.0, 16.0]
    metric, mode, saved = read_results(Path(outcome.sweep_dir) / "results.json")
    assert (metric, mode) == ("val/loss", "min")
    assert {r.trial_id: r.status for r in saved} == {r.trial_id: r.status for r in outcome.records}
    for name in ("metric_vs_params.png", "learning_curves.png"):
        assert (Path(outcome.sweep_dir) / "plots" / name).stat().st_size > 10_000


def test_one_mlflow_run_per_trial_nested_under_the_sweep(train_sweep):
    outcome, _ = train_sweep
    state = json.loads((Path(outcome.sweep_dir) / SWEEP_FILE).read_text())
    runs = tracking.trial_runs(state["tracking_uri"], outcome.parent_run_id)
    assert set(runs) == {r.trial_id for r in outcome.records}
    for record in outcome.records:
        run = runs[record.trial_id]
        assert run.info.status == "FINISHED" and run.data.tags[tracking.PARENT_TAG] == outcome.parent_run_id
        expected = "completed" if record.status == TERMINATED else "stopped_early"
        assert run.data.tags[tracking.TRIAL_STATUS_TAG] == expected
        assert float(run.data.params["training.predictor_lr"]) == record.params["training.predictor_lr"]
        assert "val/loss" in run.data.metrics
        assert tracking.has_checkpoint(tracking.mlflow_client(state["tracking_uri"]), run.info.run_id)
    client = tracking.mlflow_client(state["tracking_uri"])
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["tune/stopped_early"] >= 2 and parent.data.metrics["tune/trials"] == 4
    assert math.isclose(parent.data.metrics["best/val/loss"], outcome.best.metric)
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"results.json", "results.csv", "best.json", "plots", "checkpoint"} <= artifacts
    (version,) = client.search_model_versions("name='tune-test'")
    assert version.run_id == outcome.parent_run_id and version.version == outcome.model_version


def test_the_best_checkpoint_loads_plans_and_serves(train_sweep):
    from dinowm_core.training.checkpoint import load_world_model
    from ray_jobs.evaluate import plan_checkpoint
    from serving.schemas import PlanRequest
    from serving.service import PlanningService
    from tests.serving.serving_helpers import obs

    outcome, out = train_sweep
    best = Path(outcome.best_dir)
    assert json.loads((best.parent / "best.json").read_text())["trial"]["trial_id"] == outcome.best.trial_id
    wm = load_world_model(best)
    assert wm.predictor is not None
    result, _, _ = plan_checkpoint(str(best), ["n_evals=2", "budget=5", "planner.cem.opt_steps=1",
                                              "planner.cem.num_samples=8", "planner.cem.topk=2",
                                              "n_plot_samples=0", f"output_dir={out}"], use_ray=False)  # fmt: skip
    assert result.summary()["n"] == 2
    service = PlanningService.load(str(best))
    body = {
        "obs": obs(0),
        "goal": obs(1),
        "seed": 0,
        "planner": {"num_samples": 8, "topk": 2, "opt_steps": 1},
    }
    (answer,) = service.plan([PlanRequest.model_validate(body)])
    actions = np.asarray(answer.actions)
    assert actions.shape[1] == 2 and np.isfinite(actions).all()


def test_a_planner_sweep_reports_each_setting_with_its_interval(train_sweep, tmp_path):
    from dinowm_core.presets import plan_config
    from dinowm_core.training.checkpoint import load_config_from_checkpoint

    outcome, out = train_sweep
    space = _space(tmp_path / "cem.yaml", """
        kind: planner
        env: wall
        base: {planner.name: mpc_cem, eval.n_evals: 3, eval.budget: 5, eval.n_plot_samples: 0}
        params:
          planner.cem.num_samples: {grid: [8, 24]}
          planner.cem.opt_steps: {grid: [1, 2]}
          planner.cem.topk: {choice: [4]}
    """)  # fmt: skip
    sweep = run_sweep(str(space), [outcome.best_dir, f"output_dir={out}", "mlflow.register_model=null"])
    assert len(sweep.records) == 4 and all(r.status == TERMINATED for r in sweep.records)
    settings = {
        (r.params["planner.cem.num_samples"], r.params["planner.cem.opt_steps"]) for r in sweep.records
    }
    assert settings == {(8, 1), (8, 2), (24, 1), (24, 2)}
    for r in sweep.records:  # the same 3 episodes for every setting, success with its 95% interval
        lo, hi = r.extra["plan/success_ci_low"], r.extra["plan/success_ci_high"]
        assert 0 <= lo <= r.metric <= hi <= 1 and r.extra["plan/time_per_plan_s"] > 0
        episodes = json.loads((Path(sweep.sweep_dir) / "trials" / r.trial_id / "results.json").read_text())
        assert [e["episode_seed"] for e in episodes["per_seed"]["99"]["episodes"]] == [
            e["episode_seed"] for e in json.loads(
                (Path(sweep.sweep_dir) / "trials" / sweep.records[0].trial_id / "results.json").read_text()
            )["per_seed"]["99"]["episodes"]
        ]  # fmt: skip
    assert sweep.best.metric == max(r.metric for r in sweep.records)
    info = json.loads((Path(sweep.sweep_dir) / "best.json").read_text())
    assert "cheapest_within_ci" in info and sweep.recommended is not None
    # The export is the checkpoint with the best planner settings, and planning with it keeps them.
    tuned = load_config_from_checkpoint(sweep.best_dir)
    assert tuned.planner.cem.num_samples == sweep.best.params["planner.cem.num_samples"]
    assert tuned.presets["plan"].startswith("sweep:")
    assert plan_config(tuned, []).planner == tuned.planner
    assert (Path(sweep.sweep_dir) / "plots" / "success_vs_cost.png").is_file()

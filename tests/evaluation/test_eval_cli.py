"""`dinowm plan`: a tiny end-to-end run and clear exit-2 errors for bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ray_jobs.cli import app
from tests.evaluation.eval_helpers import tiny_cfg, tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(tiny_checkpoint(tmp_path_factory.mktemp("cli"), tiny_cfg()))


def _plan(*args: str):
    return CliRunner().invoke(app, ["plan", *args])


def test_plan_json(ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = _plan(ckpt, "env=wall", "planner=mpc_cem", "planner.cem.num_samples=8", "planner.cem.topk=2",
                "planner.cem.opt_steps=1", "goal_source=random_state", "n_evals=2", "budget=10", "seeds=[0,1]",
                "n_plot_samples=0", f"output_dir={tmp_path}", "--json", "--no-ray", "--out", str(tmp_path))  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["protocol"]["budget"] == 10 and data["protocol"]["seeds"] == [0, 1]
    assert data["protocol"]["planner"]["cem"]["num_samples"] == 8
    assert data["pooled"]["n"] == 4 and (tmp_path / "results.json").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("frameskip=3", "action dim"),
        ("env=pusht", "trained on env 'wall'"),
        ("planner.horizon=0", "horizon"),
        ("planner.cem.topk=500", "topk"),
        ("env=nope", "env=nope"),
        ("goal_source=sideways", "goal_source"),
        ("n_evals=0", "n_evals"),
    ],
)
def test_plan_bad_input_exits_2(ckpt, override, message):
    res = (
        _plan(ckpt, override, "n_evals=1", "budget=5") if "n_evals" not in override else _plan(ckpt, override)
    )
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_plan_missing_checkpoint_exits_2(tmp_path):
    res = _plan(str(tmp_path / "missing"))
    assert res.exit_code == 2 and "checkpoint" in res.output

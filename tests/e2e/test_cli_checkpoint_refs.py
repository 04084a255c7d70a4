"""MLflow references wherever a checkpoint is taken: `runs list` shows only real checkpoints, `runs model` and
`dinowm plan` accept run and model URIs, downloads land in a reusable cache and never in the temp directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_jobs.cli import app
from tests.evaluation.eval_helpers import tiny_cfg, tiny_checkpoint

MODEL = "dinowm-world-model"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An embedded store like training and `dinowm plan` leave it: a finished run with a checkpoint (registered,
    alias ``best``), a failed run without one and an evaluation run."""
    from ray_jobs import tracking

    out = tmp_path_factory.mktemp("store")
    ckpt = tiny_checkpoint(out / "src", tiny_cfg())
    uri = tracking.tracking_uri(None, out)
    tracker = tracking.RunTracker(uri, "dinowm", tracking.default_artifact_location(uri, out))
    ok = tracker.start("wall-ok", {"env": "wall"}, {})
    tracking.WorkerLogger(uri, ok).log_artifact(ckpt, tracking.CHECKPOINT_ARTIFACT)
    tracker.end("FINISHED")
    version = tracker.register(MODEL)
    tracker.client.set_registered_model_alias(MODEL, "best", version)
    failed = tracker.start("wall-failed", {"env": "wall"}, {})
    tracker.end("FAILED")
    plan = tracker.start("plan-planner-wall", {"eval": {}}, {"dinowm.kind": "evaluation"})
    tracker.end("FINISHED")
    return dict(out=out, uri=uri, ckpt=ckpt, ok=ok, failed=failed, plan=plan, version=version)


def test_runs_list_shows_a_checkpoint_only_for_runs_that_logged_one(store):
    res = CliRunner().invoke(app, ["runs", "list", "-o", str(store["out"]), "--json"])
    assert res.exit_code == 0, res.output
    by_id = {r["run_id"]: r["checkpoint"] for r in json.loads(res.stdout)}
    ok = f"runs:/{store['ok']}/checkpoint"
    assert by_id == {store["ok"]: ok, store["failed"]: None, store["plan"]: None}
    table = CliRunner().invoke(app, ["runs", "list", "-o", str(store["out"])]).stdout.splitlines()
    assert [line.split()[-1] for line in table[1:]] == ["-", "-", ok]


@pytest.mark.parametrize(
    "ref",
    [
        "runs:/{ok}/checkpoint",
        "runs:/{ok}",
        "models:/{model}/{version}",
        "models:/{model}@best",
        "{model}",
        "wall-ok",
    ],
)
def test_every_reference_form_resolves_to_the_logged_checkpoint(store, tmp_path, ref):
    from ray_jobs.runs import local_checkpoint

    ref = ref.format(ok=store["ok"], model=MODEL, version=store["version"])
    path = local_checkpoint(ref, store["uri"], cache_dir=tmp_path / "models", experiment="dinowm")
    assert path.parent == tmp_path / "models"
    for name in ("config.json", "model.safetensors"):
        assert (path / name).read_bytes() == (store["ckpt"] / name).read_bytes()
    (path / "kept").touch()  # a second resolution reuses the copy instead of downloading again
    assert local_checkpoint(ref, store["uri"], cache_dir=tmp_path / "models", experiment="dinowm") == path
    assert (path / "kept").exists() and not [p for p in (tmp_path / "models").iterdir() if p != path]


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        ("runs:/{failed}/checkpoint", LookupError, "'wall-failed' ({failed}, FAILED) has no checkpoint"),
        ("runs:/{plan}", LookupError, "has no checkpoint"),
        ("plan-planner-wall", LookupError, "has no checkpoint"),
        ("runs:/0123456789abcdef", LookupError, "no run with id"),
        ("models:/{model}/7", LookupError, "no checkpoint directory or registered model version"),
        ("models:/{model}@nope", LookupError, "registered model version"),
        ("no-such-name", LookupError, "no checkpoint directory, registered model or run in experiment"),
        ("/no/such/dir", FileNotFoundError, "checkpoint directory /no/such/dir does not exist"),
    ],
)
def test_unresolvable_references_fail_with_a_message(store, tmp_path, ref, error, message):
    from ray_jobs.runs import local_checkpoint

    ids = {"failed": store["failed"], "plan": store["plan"], "model": MODEL}
    with pytest.raises(error) as info:
        local_checkpoint(ref.format(**ids), store["uri"], cache_dir=tmp_path, experiment="dinowm")
    assert message.format(**ids) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_runs_model_downloads_to_the_output_dir_and_not_the_temp_dir(store, tmp_path):
    """In a subprocess, so that its temp directory is a fresh one this test can watch."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "ray_jobs.cli", "runs", "model", f"models:/{MODEL}@best",
           "-o", str(store["out"])]  # fmt: skip
    for _ in range(2):  # the second call finds the copy
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        path = Path(res.stdout.strip())
        assert path == store["out"] / "models" / f"{MODEL}-{store['version']}"
        assert (path / "config.json").is_file()
        assert list(tmp.iterdir()) == []


def test_plan_takes_a_run_uri_and_says_where_the_results_are(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = CliRunner().invoke(app, ["plan", f"runs:/{store['ok']}", f"output_dir={store['out']}", "env=wall",
                                   "planner.cem.num_samples=8", "planner.cem.topk=2", "planner.cem.opt_steps=1",
                                   "goal_source=random_state", "n_evals=1", "budget=5", "seeds=[0]",
                                   "--json", "--no-ray", "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pooled"]["n"] == 1  # stdout is the results JSON alone
    assert f"results in {tmp_path}" in res.stderr
    assert (store["out"] / "models" / f"run-{store['ok']}" / "config.json").is_file()


def test_plan_with_an_unknown_reference_exits_2(store):
    res = CliRunner().invoke(app, ["plan", "no-such-run", f"output_dir={store['out']}", "--no-ray"])
    assert res.exit_code == 2 and "no-such-run" in res.output and "Traceback" not in res.output


def test_evaluate_module_json_names_the_output_dir_on_stderr(monkeypatch, capsys, tmp_path):
    from ray_jobs import evaluate

    class Result:
        def to_dict(self):
            return {"pooled": {"n": 1}}

    seen = {}

    def fake_plan(ckpt, overrides, **kw):
        seen["ckpt"] = ckpt
        return Result(), None, tmp_path

    monkeypatch.setattr(evaluate, "plan_checkpoint", fake_plan)
    assert evaluate.main(["models:/m@best", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"pooled": {"n": 1}} and f"results in {tmp_path}" in err
    assert seen["ckpt"] == "models:/m@best"

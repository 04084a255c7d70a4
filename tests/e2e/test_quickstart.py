"""The README's main job, shrunk: data -> Ray Train + MLflow -> planning through the Serve planning service with
Ray env actors -> a report, via the CLI; a second run reuses every finished stage."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.sockets import SocketWatch

STAGES = ("[1/4] data", "[2/4] training on Ray Train", "[3/4] planning", "[4/4] report")


def _quickstart(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    dinowm = Path(sys.executable).parent / "dinowm"
    done = subprocess.run([str(dinowm), "quickstart", "--quick", "-o", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in STAGES:
        assert stage in done.stdout
    return done


@pytest.mark.e2e
@pytest.mark.ray
@pytest.mark.serving
def test_quickstart_quick_runs_every_stage_through_the_service_then_reuses_them(tmp_path):
    out = tmp_path / "qs"
    tmp = tempfile.mkdtemp(prefix="dwq", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": tmp}
    for key in ("RAY_ADDRESS", "RAY_TMPDIR"):
        env.pop(key, None)
    try:
        with SocketWatch(tmp) as watch:  # the quickstart's embedded cluster and Serve, all their processes
            first = _quickstart(out, env)
            runs = sorted(p.name for p in (out / "ray_results").iterdir())
            train_record = (out / "stages" / "train.json").read_text()
            again = _quickstart(out, env)
        left = os.listdir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Ray Serve (2.60) binds each replica's inter-deployment gRPC server to [::]:0 in its own code, with no setting
    # to change it (ray/serve/_private/replica.py; Ray's token auth guards it). That one socket is named here;
    # everything else, Serve's HTTP proxy included, must be on loopback.
    wide = [
        s
        for s in watch.not_loopback()
        if not (s.process.startswith("ray::ServeReplica") and s.address == "::")
    ]
    assert watch.sockets and not wide, [str(s) for s in wide]
    assert left == []  # the cluster's session, staging and caches are gone with it
    assert "Reporting training result" not in first.stdout + first.stderr  # Ray's per-report dump is silenced
    assert (
        "planning service up at http://127.0.0.1:" in first.stdout
        and "planning service stopped" in first.stdout
    )
    assert (out / "data" / "manifest.json").is_file()
    assert (out / "mlflow" / "mlflow.db").is_file()
    for policy in ("planner", "random"):
        results = json.loads((out / "plan" / policy / "results.json").read_text())
        assert results["pooled"]["n"] == 4 and 0.0 <= results["pooled"]["success_rate"] <= 1.0
    assert list((out / "plan" / "planner" / "videos").glob("*.mp4"))
    rows = json.loads((out / "stages" / "plan.json").read_text())["rows"]
    assert (
        rows["planner"]["requests"] > 0 and rows["planner"]["mean_batch"] >= 1
    )  # the service answered the plans
    assert "| mpc_cem |" in first.stdout and "| random |" in first.stdout  # the results table
    ckpt = Path(json.loads(train_record)["checkpoint"])
    assert (ckpt / "model.safetensors").is_file()
    report = out / "report.md"
    assert f"report       {report}" in first.stdout
    text = report.read_text()
    for figure in ("report/learning_curves.png", "report/success_vs_steps.png"):
        assert figure in text and (out / figure).stat().st_size > 0
    assert "| mpc_cem |" in text and ".mp4" in text
    # the second run: every stage reused, nothing retrained or re-evaluated, the report rewritten
    assert again.stdout.count("reused:") == 3, again.stdout
    assert "planning service up" not in again.stdout
    assert sorted(p.name for p in (out / "ray_results").iterdir()) == runs
    assert (out / "stages" / "train.json").read_text() == train_record
    assert report.is_file()


def test_fresh_clears_only_the_stage_outputs_of_a_quickstart_dir(tmp_path):
    from ray_jobs.quickstart import MARK, STAGE_OUTPUTS, claim_output_dir, read_stage, write_stage

    out = tmp_path / "qs"
    claim_output_dir(out, fresh=True)  # a new dir: made and marked
    assert (out / MARK).is_file()
    for name in STAGE_OUTPUTS:
        (out / name).mkdir() if "." not in name else (out / name).write_text("x")
    write_stage(out, "train", {"a": 1}, {"checkpoint": "c"})
    (out / "notes.txt").write_text("mine")
    assert read_stage(out, "train", {"a": 1})["checkpoint"] == "c"
    assert read_stage(out, "train", {"a": 2}) is None  # other settings: the stage runs again
    claim_output_dir(out, fresh=False)
    assert read_stage(out, "train", {"a": 1}) is not None
    claim_output_dir(out, fresh=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARK, "notes.txt"])
    assert read_stage(out, "train", {"a": 1}) is None

    other = tmp_path / "other"
    other.mkdir()
    (other / "data").mkdir()
    with pytest.raises(ValueError, match="not a quickstart output dir"):
        claim_output_dir(other, fresh=True)
    assert (other / "data").is_dir()


def test_reached_by_step_counts_episodes_at_the_goal_by_then():
    from ray_jobs.quickstart_report import reached_by_step

    curve = reached_by_step([0, 3, None, 5], budget=6)
    assert curve.tolist() == [0.25, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75]


def test_a_dataset_from_other_settings_is_refused_not_reused(tmp_path):
    from ray_jobs.quickstart import DATA_POLICY, SIZES, check_reused_data

    size = SIZES["quick"]
    manifest = {
        "num_episodes": size["episodes"],
        "generator": {"steps": size["steps"], "policy": DATA_POLICY},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    check_reused_data(tmp_path, size)
    manifest["generator"]["policy"] = "noisy_goal"  # e.g. data from another quickstart version
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="'policy': 'noisy_goal'.*rerun with --fresh"):
        check_reused_data(tmp_path, size)

"""A sweep whose driver is killed (SIGKILL) after two of its three trials finished, then resumed and interrupted
with Ctrl-C: ``dinowm tune --resume`` finishes it without training the finished trials again, with one MLflow run
per trial; a finished sweep is not resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ray_jobs import tracking
from ray_jobs.tune import SWEEP_FILE
from ray_jobs.tune_report import TERMINATED, read_results
from ray_jobs.tune_trials import DONE, REPORTS, train_run_name
from tests.conftest import TINY
from tests.ray import procs
from tests.tune.test_tune_sweep import SMALL

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]


def _wait_for(log: Path, text: str, count: int, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until ``text`` appears ``count`` times in the driver's log (polling another process's output)."""
    deadline = time.monotonic() + timeout_s
    while log.read_text().count(text) < count:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def test_a_killed_sweep_resumes_without_repeating_finished_trials(wall_dataset, tmp_path):
    space = tmp_path / "lr.yaml"
    space.write_text(textwrap.dedent("""
        kind: train
        base: {training.epochs: 1}
        scheduler: {name: fifo}
        params:
          training.predictor_lr: {grid: [1.0e-3, 3.0e-4, 1.0e-4]}
    """))  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ray_jobs.tune", str(space), *TINY, *SMALL, f"data.path={wall_dataset}",
           f"output_dir={out}", "--name", "killed", "--max-concurrent", "1"]  # fmt: skip
    first = tmp_path / "first.log"
    with open(first, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        _wait_for(first, "finished after", 2, proc, timeout_s=300)
        started = procs.descendants(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    # Its embedded cluster's GCS and raylet end with it, but Ray's dashboard and runtime-env agents (and a
    # worker still starting) outlive a SIGKILLed driver: Ray's behaviour, and nothing runs in a process killed
    # so. This test started them: ended here, by PID.
    procs.stop(procs.wait_gone(started, timeout_s=10))
    sweep_dir = out / "ray_results" / "killed"
    state = json.loads((sweep_dir / SWEEP_FILE).read_text())
    done = [p.parent for p in (sweep_dir / "trials").glob(f"*/{DONE}")]
    before = {d.name: (d / REPORTS).read_text() for d in done}
    assert len(before) >= 2

    resume = [sys.executable, "-m", "ray_jobs.tune", "--resume", "killed", f"output_dir={out}"]
    # Ctrl-C while the resumed sweep trains its last trial: Tune saves its state, the command says how to go on.
    second = tmp_path / "second.log"
    with open(second, "w") as f:
        proc = subprocess.Popen(
            resume, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        _wait_for(second, "dinowm_core.training.loop: training", 1, proc, timeout_s=300)
        started = procs.descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, second.read_text()[-3000:]
    finally:
        proc.kill()
    assert f"continue it with dinowm tune --resume {sweep_dir}" in second.read_text()
    assert procs.wait_gone(started, timeout_s=30) == []  # its cluster is shut down

    again = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _, _, records = read_results(sweep_dir / "results.json")
    assert len(records) == 3 and all(r.status == TERMINATED and r.metric is not None for r in records)
    finished = [r for r in records if train_run_name("killed", r.trial_id) in before]
    for r in finished:
        run = train_run_name("killed", r.trial_id)
        # Not trained again: its reports are what they were, and no worker of the resumed sweep ran it.
        assert (sweep_dir / "trials" / run / REPORTS).read_text() == before[run]
        assert f"/{run}/rank0" not in second.read_text() + again.stdout + again.stderr
    runs = tracking.trial_runs(state["tracking_uri"], state["parent_run_id"])
    assert set(runs) == {r.trial_id for r in records}  # one run per trial, none opened twice
    assert all(run.info.status == "FINISHED" for run in runs.values())

    over = subprocess.run(resume, capture_output=True, text=True, timeout=120)
    assert over.returncode == 2 and "has finished" in over.stderr

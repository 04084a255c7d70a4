"""Ctrl-C during ``dinowm train``: the workers stop, the MLflow run says KILLED, the command says how to continue
(exit 130), and the embedded cluster leaves nothing in the temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

MODEL = ["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=vqvae_small", "img_size=64"]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared:\n{path.read_text(errors='replace')[-3000:]}")


def test_ctrl_c_stops_training_and_names_the_resume(tmp_path):
    from dinowm_core.data.generate import generate
    from ray_jobs.runs import list_runs
    from ray_jobs.tracking import tracking_uri

    generate("wall", 12, 25, tmp_path / "data", seed=0, img_size=64, progress=False)
    tmp = tempfile.mkdtemp(prefix="dwi", dir="/tmp")  # short: Ray's socket paths stay under 108 bytes
    env = {**os.environ, "TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    log = tmp_path / "train.log"
    args = [str(Path(sys.executable).parent / "dinowm"), "train", *MODEL, "data.path=data",
            "training.batch_size=8", "training.epochs=1000", "training.progress_every_s=0",
            "training.val_max_batches=1", "training.num_val_rollouts=1", "ray.num_workers=2"]  # fmt: skip
    try:
        with log.open("w") as out:  # a new session: Ctrl-C in a terminal signals the whole foreground group
            proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            try:
                _wait_for(log, "ETA", proc, timeout_s=240)  # training has started
                os.killpg(proc.pid, signal.SIGINT)
                code = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        left = os.listdir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = log.read_text(errors="replace")
    assert code == 130, text[-3000:]
    hint = next(line for line in text.splitlines() if line.startswith("interrupted: run "))
    run_dir = hint.rsplit("resume=", 1)[1]
    assert Path(run_dir, "dinowm_run.json").is_file()  # what `dinowm train resume=<run dir>` reads
    assert "Traceback" not in text
    (run,) = list_runs(tracking_uri(None, tmp_path / "outputs"), "dinowm")
    assert run["status"] == "KILLED"
    assert left == []

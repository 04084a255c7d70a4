"""The README's commands, typed as a new user would: from an empty working directory, with relative paths.

Generate a dataset, train on the embedded Ray cluster, plan with Ray env actors, fetch the model by name. Each
command must succeed, every socket the embedded cluster listens on must be loopback, and a successful command
must leave nothing in the system temp directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.sockets import SocketWatch

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

MODEL = ["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=vqvae_small", "img_size=64"]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def shell(tmp_path):
    """Runs ``dinowm ...`` in ``tmp_path/work`` with a temp dir of its own (short: Ray's socket paths stay under
    108 bytes), checking that each successful command leaves that temp dir as it found it."""
    work = tmp_path / "work"
    work.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="dwe", dir="/tmp"))
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    dinowm = str(Path(sys.executable).parent / "dinowm")

    def run(*args: str, timeout: int = 420) -> subprocess.CompletedProcess:
        before = _listing(tmp)
        with SocketWatch(str(tmp)) as watch:
            done = subprocess.run([dinowm, *args], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
        assert done.returncode == 0, f"dinowm {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert not watch.not_loopback(), [str(s) for s in watch.not_loopback()]
        assert _listing(tmp) == before, f"dinowm {args[0]} left files in the temp dir"
        run.sockets |= watch.sockets
        return done

    run.sockets = set()
    run.work = work
    yield run
    shutil.rmtree(tmp, ignore_errors=True)


def test_readme_commands_from_an_empty_directory(shell):
    shell("data", "generate", "--env", "wall", "--episodes", "12", "--steps", "25", "--out", "data/wall",
          "--workers", "2", "--no-progress")  # fmt: skip
    done = shell("train", *MODEL, "data.path=data/wall", "training.max_steps=8", "training.batch_size=8",
                 "training.val_max_batches=1", "training.num_val_rollouts=1", "ray.num_workers=2")  # fmt: skip
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    ckpt = Path(outcome["checkpoint"])
    assert ckpt.is_relative_to(shell.work / "outputs") and (ckpt / "model.safetensors").is_file()
    assert any(s.port for s in shell.sockets)  # the watch saw the cluster's servers (all on loopback)

    relative = ckpt.relative_to(shell.work)
    done = shell("plan", str(relative), "--ray", "n_evals=2", "budget=10", "seeds=[0]", "planner.cem.num_samples=8",
                 "planner.cem.topk=2", "planner.cem.opt_steps=1", "n_plot_samples=0", "--out", "plan/out")  # fmt: skip
    assert "success" in done.stdout and (shell.work / "plan" / "out" / "results.json").is_file()

    done = shell("runs", "model", outcome["run_name"])  # the run's logged checkpoint, into ./outputs/models
    assert (shell.work / done.stdout.strip().splitlines()[-1] / "config.json").is_file()

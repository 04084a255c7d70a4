"""deploy/slurm: the batch script brings up a two-node Ray cluster, submits a job to it and stops it, without SLURM.

The test plays SLURM: it sets the allocation's variables (SLURM_JOB_NODELIST, SLURM_JOB_NUM_NODES, ...) and puts
fakes on PATH: ``scontrol show hostnames`` names two nodes, ``hostname --ip-address`` answers 127.0.0.1 on both,
and ``srun -w <node> CMD`` runs CMD here (``exec``, so signals reach it as srun forwards them), giving every
``ray start`` a temp dir and ports of its node's own (two Ray nodes on one machine would otherwise collide). What
runs is the real dinowm.sbatch with TYPE=train: head, worker, the wait for both nodes, ``ray job submit`` of a
2-worker training and the stop at the end.
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

from tests.ray import procs
from tests.ray.conftest import train_overrides
from tests.ray.nodes import REPO, free_port
from tests.sockets import pids_with

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SLURM = REPO / "deploy" / "slurm"

FAKE_SRUN = """#!{python}
# srun -w NODE CMD..., for a test: CMD runs on this machine; `ray start` gets NODE's own temp dir and ports.
import os, sys
sys.path.insert(0, {repo!r})
from tests.ray.nodes import free_port, node_ports

args, node = sys.argv[1:], "node"
while args and args[0].startswith("-"):
    opt = args.pop(0)
    if opt in ("-w", "--nodelist"):
        node = args.pop(0)
    elif opt.startswith("--nodelist="):
        node = opt.split("=", 1)[1]
root, env = os.environ["FAKE_SLURM_ROOT"], dict(os.environ)
if os.path.basename(args[0]) == "ray" and args[1:2] == ["start"]:
    head = "--head" in args
    args += ["--temp-dir", f"{{root}}/{{node}}", "--disable-usage-stats", *node_ports()]
    os.makedirs(f"{{root}}/{{node}}-tmp", exist_ok=True)
    env["TMPDIR"] = f"{{root}}/{{node}}-tmp"  # node-local scratch
    if head:  # 127.0.0.1 stays the head's address (Ray's local-only mode), see tests/ray/nodes.py
        args += ["--ray-client-server-port", str(free_port())]
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    else:  # a node joining 127.0.0.1 on the same machine
        args = [sys.executable, "-m", "tests.ray.ray_start_local", *args[1:]]
os.execvpe(args[0], args, env)
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
if [ "$1 $2" = "show hostnames" ]; then printf '%s\\n' node-a node-b; else exit 1; fi
"""

FAKE_HOSTNAME = """#!/usr/bin/env bash
echo 127.0.0.1
"""


def _fakes(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN.format(python=sys.executable, repo=str(REPO))),
                       ("scontrol", FAKE_SCONTROL), ("hostname", FAKE_HOSTNAME)):  # fmt: skip
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def test_launch_dry_run_prints_the_sbatch_command():
    done = subprocess.run([str(SLURM / "launch.sh"), "--dry-run", "--type", "train", "--nodes", "2", "--gpu", "4",
                           "--time", "02:00:00", "--partition", "gpu", "--", "env=pusht", "data.path=/shared/pusht"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[0] == "sbatch" and words[-4:-2] == [str(SLURM / "dinowm.sbatch"), "train"]
    for flag in (
        "--nodes=2",
        "--gpus-per-node=4",
        "--time=02:00:00",
        "--partition=gpu",
        "--job-name=dinowm-train",
    ):
        assert flag in words, words
    assert words[-2:] == ["env=pusht", "data.path=/shared/pusht"]
    bad = subprocess.run(
        [str(SLURM / "launch.sh"), "--dry-run", "--type", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "TYPE must be" in bad.stderr


def test_entrypoints_of_every_type():
    script = (f"source {SLURM / 'ray_cluster.sh'}; for t in train tune plan serve memory-eval; do "
              "echo \"$t: $(rc_entrypoint $t A=1 | tr '\\n' ' ')\"; done; rc_entrypoint bogus")  # fmt: skip
    env = {**os.environ, "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4", "DINOWM_PYTHON": "py"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unknown TYPE 'bogus'" in done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert lines["train"].split() == [
        "py",
        "-m",
        "ray_jobs.train",
        "ray.num_workers=8",
        "ray.use_gpu=true",
        "A=1",
    ]
    assert lines["tune"].split() == ["py", "-m", "ray_jobs.tune", "A=1"]
    assert lines["plan"].split() == ["py", "-m", "ray_jobs.cli", "plan", "A=1", "--ray"]
    assert lines["serve"].split()[:5] == ["py", "-m", "ray_jobs.cli", "serve", "A=1"]
    assert lines["memory-eval"].split() == ["py", "-m", "ray_jobs.cli", "memory-eval", "A=1"]


def test_sbatch_runs_a_job_on_a_two_node_cluster(wall_dataset, tmp_path):
    root = Path(
        tempfile.mkdtemp(prefix="dws-", dir="/tmp")
    )  # short: Ray's socket paths must stay < 108 bytes
    _fakes(root / "bin")
    (root / "auth_token").write_text(os.urandom(32).hex())
    dashboard = free_port()
    env = {
        **os.environ,
        "PATH": f"{root / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),  # every "node" imports this checkout
        "FAKE_SLURM_ROOT": str(root),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "0",
        "SLURMD_NODENAME": "node-a",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": str(REPO),
        "RAY_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(dashboard),
        "RAY_START_ARGS": f"--object-store-memory {100 * 1024**2}",
        "RAY_AUTH_TOKEN_PATH": str(root / "auth_token"),  # not ~/.ray/auth_token
        "DINOWM_PYTHON": sys.executable,
        "RAY": str(Path(sys.executable).parent / "ray"),
        "GLOO_SOCKET_IFNAME": "lo",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    }
    args = train_overrides(wall_dataset, tmp_path / "out", "training.epochs=1", "ray.num_workers=2",
                           "mlflow.register_model=null")  # fmt: skip
    batch = subprocess.Popen(["bash", str(SLURM / "dinowm.sbatch"), "train", *args], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        out, _ = batch.communicate(timeout=400)
    finally:
        if batch.poll() is None:  # timed out: end the batch script, then whatever it started
            stray = procs.descendants(batch.pid)
            batch.kill()
            batch.wait()
            procs.stop(stray)
        left = procs.wait_gone(pids_with(str(root)), timeout_s=15)  # workers notice their raylet's exit late
        names = [procs.name(p) for p in left]
        procs.stop(left)
        shutil.rmtree(root, ignore_errors=True)
    assert batch.returncode == 0, out[-5000:]
    assert "ray_cluster: head node-a (127.0.0.1:" in out and "workers: node-b" in out
    assert "ray_cluster: 2/2 nodes alive" in out, out[-5000:]
    assert "epoch 1/1 step 4/4" in out  # the job's logs reach the batch output
    line = next(x for x in out.splitlines() if '{"run_name"' in x)  # the driver's JSON summary
    outcome = json.loads(line[line.index("{") :])
    assert outcome["metrics"]["step"] == 4
    assert "ray_cluster: job dinowm-4242-" in out and "SUCCEEDED" in out
    assert not names, f"the batch script left Ray processes running: {names}"

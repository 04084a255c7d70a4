"""A two-node rehearsal on this machine: train across both nodes, lose one mid-run, resume, then serve a plan.

Two ``ray start`` nodes (``tests.ray.nodes``): a head and a worker, one CPU each and a custom resource each, so a
2-worker Ray Train run must spread over both. The run is submitted with ``ray job submit`` (the entrypoint of
``test_ray_job_submit.py``) and checkpoints to a shared directory. Once a checkpoint is committed, the worker node
is killed (SIGKILL of its whole process tree); Ray Train restarts the worker group, which waits until the node
comes back (started again) and resumes from that checkpoint. Then the planning service is deployed on the same
cluster with ``serve deploy`` and asked for a plan over HTTP.

Train workers all report 127.0.0.1, so placement is read from node ids: the state API's train worker actors and
the nodes' custom resources. Everything started is stopped by PID at the end, also after a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.ray import procs
from tests.ray.conftest import train_overrides
from tests.ray.nodes import REPO, LocalCluster, free_port
from tests.sockets import pids_with

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")
SERVE = str(Path(sys.executable).parent / "serve")
HEAD, WORKER = "rehearsal_head", "rehearsal_worker"  # one custom resource per node: which node is which
EPOCHS, STEPS_PER_EPOCH = 6, 4  # train_overrides: 6 episodes at a global batch of 8 -> 4 steps per epoch
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
# Saved in the checkpoint's config: what the service plans with (one MPC step costs milliseconds).
SMALL_PLANNER = (
    "planner=mpc_cem",
    "planner.cem.num_samples=12",
    "planner.cem.topk=3",
    "planner.cem.opt_steps=2",
)


@pytest.fixture(scope="module")
def two_nodes():
    # short: Ray's socket paths must stay < 108 bytes
    root = Path(tempfile.mkdtemp(prefix="dw2-", dir="/tmp"))
    # Restarting the worker group waits for the returning node longer than Train's default 60 s on a busy machine.
    cluster = LocalCluster(root, env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "240"})
    try:
        cluster.start_pair(head=(1, {HEAD: 1}), worker=(1, {WORKER: 1}))
        yield cluster
    finally:
        stubborn = cluster.stop()
        left = [procs.name(p) for p in pids_with(str(root)) if procs.alive(p)]
        procs.stop(pids_with(str(root)))
        shutil.rmtree(root, ignore_errors=True)
        assert not left, (
            f"processes of the rehearsal cluster outlived it: {left} (SIGKILL needed: {stubborn})"
        )


def _node_roles(cluster: LocalCluster) -> dict[str, str]:
    """node id -> "head" / "worker", from each node's custom resource (dead nodes included)."""
    roles = {}
    for node in cluster.state("nodes"):
        resources = node.get("resources_total") or {}
        roles[node["node_id"]] = "head" if HEAD in resources else "worker" if WORKER in resources else "?"
    return roles


def _train_worker_nodes(cluster: LocalCluster, **filters: str) -> list[str]:
    return [a["node_id"] for a in cluster.state("actors", class_name="RayTrainWorker", **filters)]


def _submit(cluster: LocalCluster, submission_id: str, entrypoint: list[str]) -> None:
    """``ray job submit --no-wait``; resubmitted while the head's job agent has not registered yet (nothing ran)."""
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", submission_id, "--no-wait",
           "--", *entrypoint]  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return
        assert "No available agent" in done.stderr and time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(1)


def _job(cluster: LocalCluster, submission_id: str) -> dict:
    return cluster.api(f"/api/jobs/{submission_id}")


def _logs(cluster: LocalCluster, submission_id: str) -> str:
    return cluster.api(f"/api/jobs/{submission_id}/logs")["logs"]


def _wait(
    what: str, check, timeout_s: float, cluster: LocalCluster, submission_id: str, interval_s: float = 0.3
):
    """Poll ``check()`` until it returns something truthy; fail with the job's status and log tail otherwise.
    A job that ends while we wait fails at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        status = _job(cluster, submission_id)["status"]
        if status in ("FAILED", "STOPPED") or time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout_s} s (job {status}); log tail:\n"
                        f"{_logs(cluster, submission_id)[-4000:]}")  # fmt: skip
        time.sleep(interval_s)


def test_two_node_training_survives_a_lost_node_and_serves(two_nodes, wall_dataset, tmp_path):
    from mlflow import MlflowClient

    from ray_jobs.tracking import tracking_uri
    from ray_jobs.train_worker import COMMITTED
    from tests.serving.conftest import obs

    cluster = two_nodes
    head_id = next(n["node_id"] for n in cluster.alive_nodes() if HEAD in n["resources_total"])
    shared = tmp_path / "shared"  # storage every node reads: checkpoints, MLflow's store, the outputs
    run_name = f"rehearsal-{uuid.uuid4().hex[:6]}"
    args = train_overrides(wall_dataset, shared / "out", f"training.epochs={EPOCHS}", "ray.num_workers=2",
                           "ray.max_failures=2", f"ray.storage_path={shared / 'ray_results'}",
                           "mlflow.register_model=null", f"run_name={run_name}",
                           *SMALL_PLANNER)  # fmt: skip
    job_id = f"train-{run_name}"
    _submit(cluster, job_id, [sys.executable, "-m", "ray_jobs.train", *args])

    # 1. Both train workers run, one per node.
    placed = _wait("two train workers", lambda: len(nodes := _train_worker_nodes(cluster, state="ALIVE")) == 2
                   and nodes, 180, cluster, job_id)  # fmt: skip
    roles = _node_roles(cluster)
    assert sorted(roles[n] for n in placed) == ["head", "worker"], (placed, roles)

    # 2. A checkpoint is committed to shared storage; then the worker node crashes.
    record = shared / "ray_results" / run_name / COMMITTED
    committed = _wait("a committed checkpoint", lambda: record.is_file() and json.loads(record.read_text()),
                      120, cluster, job_id, interval_s=0.1)  # fmt: skip
    lost = next(node for node in cluster.nodes if node.name == "worker")
    lost.kill()
    assert committed["step"] < TOTAL_STEPS, "the run finished before the node was lost: make it longer"
    cluster.wait_nodes(1, timeout_s=60)  # the head notices the lost node

    # 3. The node returns; the worker group restarts on both nodes and the job finishes.
    cluster.start_worker(num_cpus=1, resources={WORKER: 1}, name="worker2")
    cluster.wait_nodes(2, timeout_s=120)
    _wait(
        "the job's success", lambda: _job(cluster, job_id)["status"] == "SUCCEEDED", 240, cluster, job_id, 1
    )
    logs = _logs(cluster, job_id)
    assert "resuming from" in logs, logs[-4000:]
    summary = next(x for x in logs.splitlines() if '{"run_name"' in x)  # the driver's JSON line
    outcome = json.loads(summary[summary.index("{") :])
    assert outcome["metrics"]["step"] == TOTAL_STEPS and outcome["run_name"] == run_name
    checkpoint = Path(outcome["checkpoint"])
    assert checkpoint.is_relative_to(shared) and (checkpoint / "model.safetensors").is_file()

    # Three nodes ran train workers over the run: the head, the lost worker node and the one that replaced it.
    roles = _node_roles(cluster)
    by_role = Counter(roles[n] for n in set(_train_worker_nodes(cluster)))
    assert by_role == {"head": 1, "worker": 2}, (by_role, roles)
    assert head_id in _train_worker_nodes(cluster)

    # 4. MLflow has the run, and its step counter continued from the checkpoint: the steps up to the committed
    # checkpoint were trained once (a restart from scratch would repeat them), every step up to the last ran.
    client = MlflowClient(tracking_uri(None, shared / "out"))
    run = client.get_run(outcome["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_name
    counts = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert set(counts) == set(range(1, TOTAL_STEPS + 1)), sorted(counts)
    assert all(counts[s] == 1 for s in range(1, committed["step"] + 1)), counts
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == list(
        range(1, EPOCHS + 1)
    )

    # 5. The planning service on the same cluster, from the trained checkpoint, answers a plan over HTTP.
    port = free_port()
    cfg = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    cfg["proxy_location"] = "HeadOnly"  # both nodes are this machine: two proxies cannot share one port
    cfg["http_options"]["port"] = port
    cfg["applications"][0]["args"].update(checkpoint=str(checkpoint), max_batch_size=4)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([SERVE, "deploy", str(config), "-a", cluster.dashboard], env=cluster.env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # deploying is asynchronous: poll the app's readiness
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the deployed app never became ready"
            time.sleep(1)
        r = httpx.post(f"{url}/v1/plan", json={"obs": obs(2, 0), "goal": obs(2, 1)}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["actions"], r.json()
    finally:
        done = subprocess.run([SERVE, "shutdown", "-y", "-a", cluster.dashboard], env=cluster.env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

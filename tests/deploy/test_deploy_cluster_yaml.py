"""cluster.yaml (the Ray cluster launcher's config) against the autoscaler schema shipped in the installed ray
package, validated by ray's own function, plus what the project requires of it: token authentication, the
dashboard on 127.0.0.1, a CPU head and 1-GPU / 8-GPU worker types, the project images, MLflow from the environment
file, and no secrets. Each check is also shown to reject a broken copy."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.deploy.deploy_checks import REPO, find_secrets, image_problems

CLUSTER_YAML = REPO / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate(cfg: dict) -> None:
    """What `ray up` does before it launches anything: fill in the provider's defaults, then check the schema."""
    validate_config(prepare_config(copy.deepcopy(cfg)))


def _start_commands(cfg: dict) -> list[str]:
    return [*cfg.get("head_start_ray_commands", []), *cfg.get("worker_start_ray_commands", [])]


def check_cluster(cfg: dict) -> list[str]:
    """The project's requirements on the launcher config; one line per problem."""
    problems = []
    docker = cfg.get("docker", {})
    run_options = " ".join(docker.get("run_options", []))
    # Token authentication: on in every container, the token file copied from the operator's machine.
    if "RAY_AUTH_MODE=token" not in run_options:
        problems.append("docker.run_options must set RAY_AUTH_MODE=token (token authentication)")
    if any("RAY_AUTH_MODE=disabled" in c for c in _start_commands(cfg) + docker.get("run_options", [])):
        problems.append("token authentication is disabled somewhere")
    if not any(str(remote).endswith(".ray/auth_token") for remote in cfg.get("file_mounts", {})):
        problems.append("file_mounts must copy the token file to ~/.ray/auth_token on every node")
    # Dashboard: loopback only, reached with `ray dashboard cluster.yaml` (an SSH port-forward).
    head_starts = [c for c in cfg.get("head_start_ray_commands", []) if "ray start" in c]
    if not head_starts or not all(re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", c) for c in head_starts):
        problems.append("the head's `ray start` must pass --dashboard-host=127.0.0.1")
    # MLflow address from the environment file that file_mounts copies to every node, sourced before `ray start`.
    env_mount = cfg.get("file_mounts", {}).get("~/dinowm/cluster.env")
    if env_mount is None or not all(
        "~/dinowm/cluster.env" in c for c in _start_commands(cfg) if "ray start" in c
    ):
        problems.append(
            "every `ray start` must source ~/dinowm/cluster.env (MLFLOW_TRACKING_URI), mounted by file_mounts"
        )
    # Node types: a CPU head, worker types with 1 and 8 GPUs, each with autoscaler bounds.
    types = cfg.get("available_node_types", {})
    head = types.get(cfg.get("head_node_type"), {})
    if head.get("resources", {}).get("GPU", 0) != 0:
        problems.append("the head node type must be a CPU node (GPU: 0)")
    gpus = {}
    for name, spec in types.items():
        if name == cfg.get("head_node_type"):
            continue
        n = spec.get("resources", {}).get("GPU", 0)
        if n <= 0:
            problems.append(f"worker type {name} has no GPU resources")
        gpus[name] = n
        lo, hi = spec.get("min_workers"), spec.get("max_workers")
        if lo is None or hi is None or not 0 <= lo <= hi:
            problems.append(f"worker type {name}: needs 0 <= min_workers <= max_workers (got {lo}, {hi})")
    if sorted(gpus.values()) != [1, 8]:
        problems.append(f"expected a 1-GPU and an 8-GPU worker type, got {gpus}")
    # Images: the CPU image on the head, the CUDA image on GPU workers, both of this version.
    head_image, worker_image = docker.get("head_image", ""), docker.get("worker_image", "")
    if not head_image.endswith("-cpu") or not worker_image.endswith("-cuda"):
        problems.append(
            f"head_image must be the -cpu image and worker_image the -cuda one ({head_image}, {worker_image})"
        )
    problems += image_problems([head_image, worker_image], where="cluster.yaml")
    return problems


def test_schema_file_is_the_installed_rays():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert {"cluster_name", "provider"} <= set(schema["required"])


def test_cluster_yaml_is_valid_for_ray_up():
    validate(load())


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c.update(dashboard_host="0.0.0.0"),  # no such top-level key
        lambda c: c["available_node_types"]["gpu_8x"]["resources"].update(GPU="eight"),
        lambda c: c["available_node_types"]["gpu_1x"].pop("node_config"),
        lambda c: c["docker"].update(gpus="all"),  # docker options go in run_options
    ],
    ids=["unknown-key", "non-integer-gpu", "missing-node-config", "unknown-docker-key"],
)
def test_schema_rejects_a_broken_copy(breakage):
    cfg = load()
    breakage(cfg)
    with pytest.raises(jsonschema.ValidationError):
        validate(cfg)


def test_cluster_yaml_meets_the_project_requirements():
    assert check_cluster(load()) == []


def _set_dashboard_host(c, host):
    c["head_start_ray_commands"] = [x.replace("--dashboard-host=127.0.0.1", f"--dashboard-host={host}")
                                    for x in c["head_start_ray_commands"]]  # fmt: skip


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: _set_dashboard_host(c, "0.0.0.0"), "--dashboard-host=127.0.0.1"),
        (lambda c: c["docker"]["run_options"].remove("--env RAY_AUTH_MODE=token"), "RAY_AUTH_MODE=token"),
        (lambda c: c["docker"]["run_options"].append("--env RAY_AUTH_MODE=disabled"), "disabled"),
        (lambda c: c["file_mounts"].pop("~/.ray/auth_token"), "token file"),
        (lambda c: c["available_node_types"]["gpu_8x"]["resources"].pop("GPU"), "no GPU resources"),
        (lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=3, max_workers=2), "min_workers"),
        (lambda c: c["available_node_types"]["head"]["resources"].update(GPU=1), "CPU node"),
        (lambda c: c["docker"].update(worker_image="registry.example.com/dinowm:0.0.9-cuda"), "tagged 0.0.9"),
        (lambda c: c["docker"].update(head_image=c["docker"]["worker_image"]), "-cpu image"),
        (lambda c: c["file_mounts"].pop("~/dinowm/cluster.env"), "cluster.env"),
    ],
    ids=[
        "dashboard-public",
        "no-token-mode",
        "auth-disabled",
        "no-token-file",
        "gpu-type-without-gpu",
        "bad-bounds",
        "gpu-head",
        "wrong-version",
        "cuda-head",
        "no-mlflow-env",
    ],  # fmt: skip
)
def test_requirements_reject_a_broken_copy(breakage, message):
    cfg = load()
    breakage(cfg)
    problems = check_cluster(cfg)
    assert any(message in p for p in problems), problems


def test_no_secrets_in_the_launcher_files():
    for path in (CLUSTER_YAML, REPO / "deploy" / "cluster.env.example"):
        assert find_secrets(path.read_text()) == [], path
    leaked = CLUSTER_YAML.read_text() + "\n    - --env RAY_AUTH_TOKEN=3f9a0c1e5b7d2468ace0\n"
    assert find_secrets(leaked)


def test_environment_file_is_a_template_and_the_real_one_is_ignored():
    example = (REPO / "deploy" / "cluster.env.example").read_text()
    keys = {
        line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")
    }
    assert "MLFLOW_TRACKING_URI" in keys
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/cluster.env"], cwd=REPO)
    assert ignored.returncode == 0, "deploy/cluster.env (the real environment file) must be ignored by git"


def test_storage_options_are_both_shown():
    text = CLUSTER_YAML.read_text()
    assert "ray.storage_path=s3://" in text  # object storage for Ray Train
    assert re.search(r"^\s*#.*--volume /mnt/shared:/shared", text, re.M)  # NFS, commented out
    assert re.search(r"^\s*#.*mount -t nfs", text, re.M)

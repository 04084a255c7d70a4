"""Facts the deployment artifacts share, read from the repository: the project version and pins, the image names,
and a scan for secrets. Used by the tests in this directory."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# <registry>/dinowm:<project version>-<cpu|cuda>, or a local dinowm:<version>-<flavour> (docker/compose.yaml).
IMAGE = re.compile(r"^(?:(?P<registry>[\w.\-:]+)/)?dinowm:(?P<version>[\w.\-]+?)-(?P<flavour>cpu|cuda)$")

# What a committed secret looks like: cloud keys, private keys, long random-looking literals, and a literal value
# for a variable that must come from a file or a Secret.
_SECRET_PATTERNS = {
    "an AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a long hex string (a token?)": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    "a literal secret value": re.compile(
        r"(?i)\b(?:token|api_key|apikey|password|passwd|secret|secret_access_key)[\"']?\s*[:=]\s*[\"']?"
        r"(?!\$|\{\{)[A-Za-z0-9+/_\-]{12,}"
    ),
    "a Ray token in the environment": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?[A-Za-z0-9]"),
}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_version() -> str:
    return pyproject()["project"]["version"]


def pins() -> dict[str, str]:
    """Exact pins of the project's dependencies: {"torch": "2.14.1", "ray": "2.60.0", ...}."""
    out = {}
    for dep in pyproject()["project"]["dependencies"]:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([\w.]+)$", dep)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def find_secrets(text: str) -> list[str]:
    """One line per suspicious match (what it looks like, and the line)."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for what, pattern in _SECRET_PATTERNS.items():
            if pattern.search(line):
                problems.append(f"line {n}: {what}: {line.strip()[:80]}")
    return problems


def image_problems(images: list[str], *, where: str) -> list[str]:
    """Every image is dinowm:<project version>-cpu|cuda, all from one registry."""
    problems, registries = [], set()
    version = project_version()
    for image in images:
        m = IMAGE.match(image)
        if not m:
            problems.append(f"{where}: image {image!r} is not <registry>/dinowm:<version>-cpu|cuda")
            continue
        if m["version"] != version:
            problems.append(f"{where}: image {image!r} is tagged {m['version']}, the project is {version}")
        registries.add(m["registry"])
    if len(registries) > 1:
        problems.append(f"{where}: images come from several registries: {sorted(map(str, registries))}")
    return problems

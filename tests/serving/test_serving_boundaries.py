"""The serving layers keep their imports: schemas (pydantic), sessions (standard library) and images (numpy,
PIL) import without torch; the service imports without ray, fastapi, mlflow, starlette, uvicorn or httpx."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("ray", "fastapi", "mlflow", "starlette", "uvicorn", "httpx")

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys

    BANNED, MODULE = set(sys.argv[1].split(",")), sys.argv[2]

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BANNED:
                raise ImportError(f"blocked import: {name}")
            return None

    sys.meta_path.insert(0, Block())
    importlib.import_module(MODULE)
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BANNED)))
    """
)


@pytest.mark.parametrize(
    ("module", "banned"),
    [
        ("serving.schemas", (*FRAMEWORKS, "torch", "numpy")),
        ("serving.sessions", (*FRAMEWORKS, "torch", "numpy", "pydantic")),
        ("serving.images", (*FRAMEWORKS, "torch")),
        ("serving.service", FRAMEWORKS),
    ],
)
def test_serving_module_imports_without_banned_packages(module, banned):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(banned), module],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

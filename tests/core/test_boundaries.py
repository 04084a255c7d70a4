"""dinowm_core stays framework-free: no ray, fastapi, mlflow, starlette or uvicorn, checked two ways.

* At run time: a fresh interpreter with those packages blocked imports every module of dinowm_core (found by
  ``pkgutil.walk_packages``, so a new module is covered without editing this file), builds a small world
  model and back-propagates its loss, and none of the banned packages ends up in ``sys.modules``.
* At lint time: ruff's banned-api rule (TID251, configured in pyproject.toml) reports each banned import in
  a file under dinowm_core/ and none in the same file under ray_jobs/.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BANNED = ("ray", "fastapi", "mlflow", "starlette", "uvicorn")
# dinowm_core has 56 modules today; far fewer means the discovery lost a package (e.g. a missing __init__.py).
MIN_MODULES = 40

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys

    BANNED, REPO = set(sys.argv[1].split(",")), sys.argv[2]

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BANNED:
                raise ImportError(f"blocked import: {name}")
            return None

    assert not [m for m in sys.modules if m.split(".")[0] in BANNED], "banned module preloaded"
    sys.meta_path.insert(0, Block())

    import dinowm_core
    assert dinowm_core.__file__.startswith(REPO), f"imported {dinowm_core.__file__}, not the checkout"

    def fail(name):  # walk_packages silently skips a package whose import fails unless told otherwise
        raise ImportError(f"could not import package {name}")

    modules = [m.name for m in pkgutil.walk_packages(dinowm_core.__path__, "dinowm_core.", onerror=fail)]
    for name in modules:
        importlib.import_module(name)

    import torch
    from dinowm_core import build_world_model, load_config
    wm = build_world_model(load_config(["env=wall", "encoder=dino_tiny", "predictor=vit_small",
                                        "decoder=vqvae_small", "img_size=64"]))
    obs = {"visual": torch.zeros(1, 4, 3, 64, 64), "proprio": torch.zeros(1, 4, 2)}
    loss, _ = wm.loss(obs, torch.zeros(1, 4, 10))
    loss.backward()

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BANNED)
    print(json.dumps({"modules": modules, "leaked": leaked}))
    """
)


def test_every_core_module_imports_without_banned_frameworks():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BANNED), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout, not an installed copy
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    modules = result["modules"]
    assert len(modules) >= MIN_MODULES, f"only {len(modules)} dinowm_core modules discovered: {modules}"
    # Sub-packages are walked too (dinowm_core.models needs its __init__.py for that).
    assert "dinowm_core.models.world_model" in modules
    assert "dinowm_core.data.importers.dino_wm" in modules
    assert result["leaked"] == []


def _ruff() -> list[str]:
    """The ruff next to this interpreter (the venv's), else ``python -m ruff``."""
    exe = Path(sys.executable).with_name("ruff")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ruff"]


PROBE = "".join(f"import {name}\n" for name in BANNED) + "from ray import serve\nimport mlflow.tracking\n"


def _tid251_lines(package: str) -> list[int]:
    """Write PROBE into a temporary folder under ``package`` and return the lines ruff flags with TID251.

    The folder has no ``__init__.py``, so ``pkgutil.walk_packages`` (the test above) never sees the probe even
    if the two tests ran at the same time; ruff lints it under the repository's configuration all the same.
    """
    tmp = Path(tempfile.mkdtemp(prefix="_ruff_probe_", dir=REPO / package))
    try:
        probe = tmp / "probe.py"
        probe.write_text(PROBE)
        out = subprocess.run(
            [*_ruff(), "check", "--no-cache", "--select", "TID251", "--output-format", "json",
             str(probe.relative_to(REPO))],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert out.returncode in (0, 1), out.stderr  # 1 = violations found, 2 = ruff itself failed
    return sorted(d["location"]["row"] for d in json.loads(out.stdout) if d["code"] == "TID251")


def test_ruff_bans_framework_imports_in_core_only():
    n = len(PROBE.splitlines())
    assert _tid251_lines("dinowm_core") == list(range(1, n + 1))  # every banned import, submodules too
    assert _tid251_lines("ray_jobs") == []

"""dinowm_core stays framework-free: it imports, builds, steps and plans with ray, fastapi and mlflow blocked."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"ray", "fastapi", "mlflow", "starlette", "uvicorn"}:
                raise ImportError(f"blocked import: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import pkgutil, importlib
    import dinowm_core
    for mod in pkgutil.walk_packages(dinowm_core.__path__, "dinowm_core."):
        importlib.import_module(mod.name)
    import torch
    from dinowm_core import build_world_model, load_config
    wm = build_world_model(load_config(["env=wall", "encoder=dino_tiny", "predictor=vit_small",
                                        "decoder=vqvae_small", "img_size=64"]))
    obs = {"visual": torch.zeros(1, 4, 3, 64, 64), "proprio": torch.zeros(1, 4, 2)}
    loss, _ = wm.loss(obs, torch.zeros(1, 4, 10))
    loss.backward()
    print("OK", sorted(m for m in sys.modules if m.split(".")[0] in {"ray", "fastapi", "mlflow"}))
    """
)


def test_core_imports_without_ray_fastapi_mlflow():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK []")

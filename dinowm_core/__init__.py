"""dinowm_core: DINO-WM world models in plain PyTorch (no Ray, no web framework, no tracking server).

Public entry points::

    cfg = load_config(["env=wall", "encoder=dino_tiny"])
    wm = build_world_model(cfg)
    save_world_model(wm, "ckpt/")
    wm = load_world_model("ckpt/")

Names are imported lazily so that ``import dinowm_core`` (and the config system) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "dinowm_core.config",
    "ConfigError": "dinowm_core.config",
    "apply_overrides": "dinowm_core.presets",
    "load_config": "dinowm_core.presets",
    "build_world_model": "dinowm_core.models.build",
    "build_encoder": "dinowm_core.models.encoders",
    "WorldModel": "dinowm_core.models.world_model",
    "CheckpointError": "dinowm_core.training.checkpoint",
    "load_world_model": "dinowm_core.training.checkpoint",
    "save_world_model": "dinowm_core.training.checkpoint",
}

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "WorldModel",
    "apply_overrides",
    "build_encoder",
    "build_world_model",
    "load_config",
    "load_world_model",
    "save_world_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dinowm_core' has no attribute {name!r}")


if TYPE_CHECKING:
    from dinowm_core.config import Config, ConfigError
    from dinowm_core.models.build import build_world_model
    from dinowm_core.models.encoders import build_encoder
    from dinowm_core.models.world_model import WorldModel
    from dinowm_core.training.checkpoint import CheckpointError, load_world_model, save_world_model

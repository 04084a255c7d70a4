"""The DINO-WM world model and its parts: visual encoders (DINOv2), ViT predictor, decoders, embedders.

    wm = build_world_model(cfg)          # encoder + embedders + predictor + decoder from a Config
    print(model_summary(wm))

Names are imported lazily, as in :mod:`dinowm_core`, so that importing the package does not build or load
anything; the submodules (``world_model``, ``predictor``, ``decoder``, ``encoders``, ``dinov2``, ``embedders``,
``build``, ``summary``) can be imported directly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "WorldModel": "dinowm_core.models.world_model",
    "ViTPredictor": "dinowm_core.models.predictor",
    "frame_causal_mask": "dinowm_core.models.predictor",
    "VQVAEDecoder": "dinowm_core.models.decoder",
    "TransposedConvDecoder": "dinowm_core.models.decoder",
    "Embedder": "dinowm_core.models.embedders",
    "VisualEncoder": "dinowm_core.models.encoders",
    "build_encoder": "dinowm_core.models.encoders",
    "build_encoder_from_config": "dinowm_core.models.build",
    "build_world_model": "dinowm_core.models.build",
    "count_params": "dinowm_core.models.summary",
    "model_summary": "dinowm_core.models.summary",
}

__all__ = [
    "Embedder",
    "TransposedConvDecoder",
    "VQVAEDecoder",
    "ViTPredictor",
    "VisualEncoder",
    "WorldModel",
    "build_encoder",
    "build_encoder_from_config",
    "build_world_model",
    "count_params",
    "frame_causal_mask",
    "model_summary",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dinowm_core.models' has no attribute {name!r}")


if TYPE_CHECKING:
    from dinowm_core.models.build import build_encoder_from_config, build_world_model
    from dinowm_core.models.decoder import TransposedConvDecoder, VQVAEDecoder
    from dinowm_core.models.embedders import Embedder
    from dinowm_core.models.encoders import VisualEncoder, build_encoder
    from dinowm_core.models.predictor import ViTPredictor, frame_causal_mask
    from dinowm_core.models.summary import count_params, model_summary
    from dinowm_core.models.world_model import WorldModel

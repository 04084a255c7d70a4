"""Shared pytest fixtures: small configs that build in milliseconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY = [
    "env=wall",
    "encoder=dino_tiny",
    "predictor=vit_small",
    "decoder=vqvae_small",
    "img_size=64",
    "frameskip=5",
    "num_hist=3",
]


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_cfg():
    from dinowm_core import load_config

    return load_config(TINY)

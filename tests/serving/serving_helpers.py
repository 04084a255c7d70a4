"""Shared pieces of the serving tests: a tiny untrained world model with non-trivial normalization, saved as a
checkpoint, and request bodies built from random frames."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from dinowm_core import save_world_model
from tests.evaluation.eval_helpers import tiny_cfg, tiny_wm

# Env units differ from model units, so a missing (de)normalization shows in the actions.
NORMALIZATION = {
    "action_mean": [0.1, -0.2],
    "action_std": [0.5, 2.0],
    "proprio_mean": [1.0, 2.0],
    "proprio_std": [3.0, 4.0],
    "action_scale": 1.0,
}


def serving_wm(*overrides: str):
    """The evaluation tests' tiny model (mpc_cem, 12 samples, 2 iterations) with NORMALIZATION."""
    wm = tiny_wm(tiny_cfg(*overrides))
    wm.normalization = dict(NORMALIZATION)
    return wm


def serving_checkpoint(root: Path, *overrides: str) -> Path:
    return save_world_model(serving_wm(*overrides), root / "ckpt")


def frame(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def image_b64(img: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> str:
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    (pil.convert(mode) if mode else pil).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def raw_b64(img: np.ndarray) -> dict:
    return {
        "shape": list(img.shape),
        "dtype": "uint8",
        "data": base64.b64encode(img.tobytes()).decode("ascii"),
    }


def proprio(seed: int) -> list[float]:
    return np.random.default_rng(seed + 10_000).normal(size=2).round(3).tolist()


def obs(seed: int, **kw) -> dict:
    """An observation body: a random 64x64 PNG and a random proprio, both from ``seed``."""
    return {"visual": image_b64(frame(seed)), "proprio": proprio(seed), **kw}


def model_obs(seeds: list[int]) -> dict[str, np.ndarray]:
    """The same observations as raw env arrays, batched: what the evaluation's policy receives."""
    return {"visual": np.stack([frame(s) for s in seeds]), "proprio": np.array([proprio(s) for s in seeds])}


def decode_png(text: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    assert img.format == "PNG"
    return img

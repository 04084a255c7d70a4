"""Feature cache: frozen-encoder patch tokens for every frame of a dataset (``dinowm data encode``).

With a frozen encoder (reference: DINOv2 is never trained), encoding every frame once turns each training
epoch's encoder forward passes into memory-mapped reads. Layout, inside the dataset directory::

    features/<encoder>-<weights fingerprint>-img<img_size>-in<encoder input size>/
        tokens-00000.npy   float16 (rows of shard 0, P, D), row order = the shard's rows
        ...
        meta.json          written last: encoder identity, transform, shapes, the dataset's checksums

The key covers the encoder identity (name + weights fingerprint) and the image transform (model img_size and
the encoder's input size), so changing either selects another directory; ``meta.json`` also records the
dataset files' checksums, so a cache of a regenerated dataset is refused as stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dinowm_core.data.store import DatasetError, TrajectoryStore
from dinowm_core.data.windows import frames_to_tensor
from dinowm_core.data.writer import atomic_write_text

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
META_FILE = "meta.json"


def encoder_input_size(encoder_name: str, img_size: int) -> int:
    """The reference resizes 224 -> 196 for DINOv2 (img_size // 16 patches of 14 px); others take img_size."""
    return img_size // 16 * 14 if encoder_name.startswith("dinov2") else img_size


def dataset_digest(manifest: dict[str, Any]) -> str:
    files = json.dumps({k: v["sha256"] for k, v in sorted(manifest["files"].items())})
    return hashlib.sha256(files.encode()).hexdigest()[:16]


def cache_key(encoder_name: str, fingerprint: str, img_size: int) -> str:
    return f"{encoder_name}-{fingerprint}-img{img_size}-in{encoder_input_size(encoder_name, img_size)}"


class FeatureCache:
    """Memory-mapped tokens of one (dataset, encoder, transform); ``tokens(i, steps)`` -> float16 (T, P, D)."""

    def __init__(self, store: TrajectoryStore, encoder_name: str, fingerprint: str, img_size: int) -> None:
        self.store = store
        self.dir = store.path / FEATURES_DIR / cache_key(encoder_name, fingerprint, img_size)
        meta_path = self.dir / META_FILE
        if not meta_path.is_file():
            raise DatasetError(f"{meta_path}: no feature cache (run `dinowm data encode {store.path}`)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta["dataset"] != dataset_digest(store.manifest):
            raise DatasetError(
                f"{self.dir}: stale (built for other dataset files); re-run `dinowm data encode`"
            )
        self._arrays: dict[int, np.ndarray] = {}

    def _shard(self, s: int) -> np.ndarray:
        arr = self._arrays.get(s)
        if arr is None:
            path = self.dir / f"tokens-{s:05d}.npy"
            try:
                arr = self._arrays[s] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DatasetError(f"{path}: cannot open ({e})") from None
        return arr

    def tokens(self, i: int, steps: Any) -> np.ndarray:
        steps = np.asarray(steps, np.int64)
        s, first = int(self.store._ep_shard[i]), int(self.store._ep_first[i])  # noqa: SLF001
        return np.asarray(self._shard(s)[first + steps])


def _encode_frames(
    encoder: torch.nn.Module, frames: np.ndarray, img_size: int, input_size: int
) -> np.ndarray:
    x = frames_to_tensor(frames, img_size)  # (B, 3, img, img) in [-1, 1]
    if input_size != img_size:
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False
        )
    with torch.inference_mode():
        return encoder(x).to(torch.float16).numpy()


def encode_dataset(
    path: str | Path,
    encoder_name: str,
    *,
    weights: str | None = None,
    img_size: int = 224,
    batch_size: int = 64,
    pretrained: bool = True,
    encoder: torch.nn.Module | None = None,
) -> Path:
    """Write (or reuse) the feature cache of ``path`` for an encoder; returns the cache directory."""
    from dinowm_core.models.encoders import build_encoder, encoder_fingerprint

    store = TrajectoryStore(path)
    if encoder is None:
        encoder = build_encoder(encoder_name, weights, feature="patch", pretrained=pretrained)
    encoder.eval()
    key = cache_key(encoder_name, encoder_fingerprint(encoder), img_size)
    final = store.path / FEATURES_DIR / key
    if (final / META_FILE).is_file():
        try:
            FeatureCache(store, encoder_name, encoder_fingerprint(encoder), img_size)
            log.info("feature cache %s is up to date", final)
            return final
        except DatasetError:
            shutil.rmtree(final)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    input_size = encoder_input_size(encoder_name, img_size)
    shape = None
    for s, meta in enumerate(store.manifest["shards"]):
        eps = [i for i in range(store.num_episodes) if store._ep_shard[i] == s]  # noqa: SLF001
        out = None
        for i in eps:
            T, first = store.episode_length(i), int(store._ep_first[i])  # noqa: SLF001
            for start in range(0, T, batch_size):
                stop = min(start + batch_size, T)
                tok = _encode_frames(encoder, store.frames(i, np.arange(start, stop)), img_size, input_size)
                if out is None:
                    shape = tok.shape[1:]
                    out = np.lib.format.open_memmap(tmp / f"tokens-{s:05d}.npy", "w+", np.float16,
                                                    (meta["num_rows"], *shape))  # fmt: skip
                out[first + start : first + stop] = tok
        if out is not None:
            out.flush()
            del out
    meta = {
        "encoder": encoder_name,
        "fingerprint": encoder_fingerprint(encoder),
        "img_size": img_size,
        "input_size": input_size,
        "token_shape": list(shape or ()),
        "dtype": "float16",
        "dataset": dataset_digest(store.manifest),
    }
    atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1))
    os.replace(tmp, final)
    return final

"""Feature cache: tokens match a direct encoder pass; keyed by encoder weights and transform; stale detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinowm_core.data.features import FeatureCache, encode_dataset
from dinowm_core.data.store import DatasetError, TrajectoryStore
from dinowm_core.data.windows import frames_to_tensor

encoders = pytest.importorskip("dinowm_core.models.encoders", reason="the encoder module has not landed")


def _tiny(seed=0):
    return encoders.build_encoder("dinov2_tiny", feature="patch", pretrained=False, width=32, depth=1, heads=2,
                                  init_seed=seed)  # fmt: skip


def test_cache_matches_encoder_and_is_keyed(make_store):
    path, eps = make_store([9, 5, 7], img=16, per_shard=2)
    enc = _tiny()
    cache_dir = encode_dataset(path, "dinov2_tiny", img_size=32, batch_size=4, encoder=enc)
    assert cache_dir.name.endswith("-img32-in28")
    store = TrajectoryStore(path)
    cache = FeatureCache(store, "dinov2_tiny", encoders.encoder_fingerprint(enc), 32)
    x = F.interpolate(frames_to_tensor(eps[2]["frames"][[1, 6]], 32), size=(28, 28), mode="bilinear",
                      antialias=True, align_corners=False)  # fmt: skip
    with torch.inference_mode():
        want = enc(x).to(torch.float16).numpy()
    got = cache.tokens(2, [1, 6])
    assert got.dtype == np.float16 and got.shape == (2, 4, 32)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)
    assert store.verify() == []  # the cache lives beside the data files, outside the manifest
    # Same encoder again: reused, not rewritten. Other weights or transform: another key.
    assert encode_dataset(path, "dinov2_tiny", img_size=32, encoder=enc) == cache_dir
    other = encode_dataset(path, "dinov2_tiny", img_size=32, encoder=_tiny(seed=1))
    assert other != cache_dir
    assert encode_dataset(path, "dinov2_tiny", img_size=16, encoder=enc) not in (cache_dir, other)
    with pytest.raises(DatasetError, match="no feature cache"):
        FeatureCache(store, "dinov2_tiny", "0" * 16, 32)

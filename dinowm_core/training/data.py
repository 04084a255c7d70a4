"""Training-side data plumbing: feature-cache windows, resumable sampling, DataLoaders.

* :class:`CachedWindows` adds the frozen encoder's cached tokens to every window (``obs["visual_tokens"]``),
  so the world model skips the encoder; the images still load as the decoder's reconstruction target.
* :class:`SkipSampler` drops the first ``skip`` indices of an epoch's order. The order itself is a function
  of (seed, epoch), so a run resumed in the middle of an epoch continues with exactly the windows the
  uninterrupted run would have seen next, without loading and discarding batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dinowm_core.config import Config
from dinowm_core.data.features import FeatureCache
from dinowm_core.data.store import DatasetError
from dinowm_core.data.windows import WindowDataset
from dinowm_core.models.encoders import encoder_fingerprint
from dinowm_core.models.world_model import WorldModel


class CachedWindows(Dataset):
    """A :class:`WindowDataset` whose items also carry ``obs["visual_tokens"]`` float16 (T, P, D)."""

    def __init__(self, windows: WindowDataset, cache: FeatureCache) -> None:
        self.windows, self.cache = windows, cache
        self.action_dim, self.proprio_dim = windows.action_dim, windows.proprio_dim

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, idx: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        obs, act, state = self.windows[idx]
        ep, s = self.windows.window(idx)
        steps = s + self.windows.frameskip * np.arange(self.windows.num_frames)
        obs["visual_tokens"] = torch.from_numpy(self.cache.tokens(ep, steps))
        return obs, act, state


def open_feature_cache(windows: WindowDataset, wm: WorldModel, cfg: Config) -> FeatureCache:
    """The cache matching ``wm``'s encoder and ``cfg``'s transform; a clear error when absent or unusable."""
    if cfg.encoder.train:
        raise DatasetError("data.feature_cache: cached features are stale by design when encoder.train=true")
    if cfg.encoder.feature != "patch":
        raise DatasetError("data.feature_cache: caches hold patch tokens; encoder.feature must be 'patch'")
    cache = FeatureCache(windows.store, cfg.encoder.name, encoder_fingerprint(wm.encoder), cfg.img_size)
    want = [cfg.num_visual_tokens, wm.visual_dim]
    if list(cache.meta.get("token_shape", [])) != want:
        raise DatasetError(
            f"{cache.dir}: token shape {cache.meta.get('token_shape')}, the model expects {want}; "
            f"re-run `dinowm data encode {windows.store.path}`"
        )
    return cache


class SkipSampler(Sampler[int]):
    """Yields ``sampler``'s epoch order without its first ``skip`` indices (then ``skip`` resets to 0)."""

    def __init__(self, sampler: Sampler[int], skip: int = 0) -> None:
        self.sampler, self.skip = sampler, skip

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        self.skip = 0  # only the resumed epoch is shortened
        return it


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def split_batch(
    obs: dict[str, torch.Tensor], act: torch.Tensor, parts: int
) -> list[tuple[dict, torch.Tensor]]:
    """Split a batch along B into ``parts`` micro-batches (the last may be smaller)."""
    size = -(-act.shape[0] // parts)
    chunks = [{k: v[i : i + size] for k, v in obs.items()} for i in range(0, act.shape[0], size)]
    return [(o, act[i * size : (i + 1) * size]) for i, o in enumerate(chunks)]

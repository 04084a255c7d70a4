"""Transformer-XL's segment recurrence (Dai et al. 2019) as a memory: the keys and values of the last frames
that left the window, per block, attended to by every frame of the window.

Unlike the other stores it lives inside attention: a block's keys/values are what is remembered, so the
predictor's blocks read (:meth:`SegmentCache.past`) and extend (:meth:`SegmentCache.extend`) it. The cached frames
are all before the window (the write rule of ``base``), so every query may see them (frame index -1 in the
predictor's masks). The positions they were computed at are their window slots' (absolute, as in the rest of the
predictor; Transformer-XL's relative encoding is left out). The cache keeps its autograd graph: the sequence loss
detaches every state every ``training.tbptt_windows`` windows.
"""

from __future__ import annotations

import torch

from dinowm_core.models.memory.base import State


class SegmentCache:
    """Per-block key/value cache of ``frames`` frames of ``tokens`` tokens; state ``seg<i>.k``/``seg<i>.v``
    (B, heads, L, dim_head), L growing to ``frames * tokens``."""

    def __init__(self, depth: int, heads: int, dim_head: int, frames: int, tokens: int) -> None:
        self.depth, self.heads, self.dim_head = depth, heads, dim_head
        self.keep = frames * tokens
        self.tokens = tokens

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        empty = torch.zeros(batch_size, self.heads, 0, self.dim_head, device=device)
        return {f"seg{i}.{kv}": empty for i in range(self.depth) for kv in ("k", "v")}

    @staticmethod
    def past(state: State, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``block``'s cached (keys, values), (B, heads, L, dim_head) each."""
        return state[f"seg{block}.k"], state[f"seg{block}.v"]

    def extend(self, state: State, block: int, k: torch.Tensor, v: torch.Tensor, commit: int) -> State:
        """The block's cache after the window's first ``commit`` frames leave it (k, v: the window's own, (B,
        heads, T*P, dim_head)); the oldest frames beyond ``frames`` are dropped."""
        old_k, old_v = self.past(state, block)
        if commit == 0:  # a read (planning candidates, every rollout step): the cache as it is, no copy
            return {f"seg{block}.k": old_k, f"seg{block}.v": old_v}
        n = commit * self.tokens
        return {f"seg{block}.k": torch.cat([old_k, k[:, :, :n]], 2)[:, :, -self.keep :],
                f"seg{block}.v": torch.cat([old_v, v[:, :, :n]], 2)[:, :, -self.keep :]}  # fmt: skip

"""Lookup memory: a bounded FIFO bank of per-frame summaries per sample, read by top-k cosine similarity.

An episodic key-value memory in the style of kNN-augmented models (Wu et al., "Memorizing Transformers", 2022):
each written frame leaves one entry ``e = W_E mean_P(x)`` in its sample's bank; a row's queries are pooled into
one vector ``u = W_Q mean_Q(query)`` and the ``top_k`` valid entries with the largest cosine similarity
``cos(u, W_K e)`` come back as values ``W_V e``, most similar first. The bank holds the last ``capacity`` frames
(the oldest is overwritten), so memory and read cost stay bounded over long episodes.

Shape letters: B batch, T frames, P tokens per frame, D width, Q queries, C capacity, K key width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from dinowm_core.models.memory.base import RetrievalStore, State, fp32, grouped


class LookupMemory(RetrievalStore):
    """Per-sample FIFO bank of frame summaries with top-k cosine retrieval."""

    def __init__(self, dim: int, *, capacity: int = 64, top_k: int = 4, key_dim: int | None = None) -> None:
        super().__init__()
        if capacity < 1 or top_k < 1:
            raise ValueError(f"capacity and top_k must be >= 1; got {capacity=}, {top_k=}")
        self.dim, self.capacity, self.top_k = dim, capacity, top_k
        self.key_dim = dim if key_dim is None else key_dim
        self.to_entry = nn.Linear(dim, dim, bias=False)
        self.to_key = nn.Linear(dim, self.key_dim, bias=False)
        self.to_query = nn.Linear(dim, self.key_dim, bias=False)
        self.to_value = nn.Linear(dim, dim, bias=False)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        """-> {"bank": (B, C, D) fp32, "valid": (B, C) bool, "frame": (B, C) int64 (-1: empty), "count": (B,)}."""
        device = self.to_entry.weight.device if device is None else torch.device(device)
        c = self.capacity
        return {
            "bank": torch.zeros(batch_size, c, self.dim, device=device),
            "valid": torch.zeros(batch_size, c, dtype=torch.bool, device=device),
            "frame": torch.full((batch_size, c), -1, dtype=torch.long, device=device),
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def write(self, frames: torch.Tensor, state: State) -> State:
        """frames (B, T, P, D), oldest first -> the state with one entry per frame at slot ``count % C``."""
        t_all = frames.shape[1]
        if t_all == 0:
            return state
        with fp32(frames.device):
            entries = F.linear(frames.float().mean(dim=2), self.to_entry.weight.float())  # (B, T, D)
        # Of more than C frames only the last C survive; dropping the rest keeps the scatter slots distinct.
        skip = max(0, t_all - self.capacity)
        entries = entries[:, skip:]
        count = state["count"]
        index = count[:, None] + torch.arange(
            skip, t_all, device=count.device
        )  # (B, T'): absolute frame index
        slots = index % self.capacity
        bank = state["bank"].scatter(1, repeat(slots, "b t -> b t d", d=self.dim), entries)
        return {
            "bank": bank,
            "valid": state["valid"].scatter(1, slots, torch.ones_like(slots, dtype=torch.bool)),
            "frame": state["frame"].scatter(1, slots, index),
            "count": count + t_all,
        }

    def read_with_index(self, query: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B*n, Q, D) -> (values (B*n, top_k, D), frame index (B*n, top_k) int64, -1 where missing).

        Values are ordered by decreasing similarity; a row with fewer than ``top_k`` valid entries gets zeros."""
        bank, valid = state["bank"], state["valid"]
        batch, n_slots = valid.shape
        with fp32(query.device):
            u = grouped(query.float(), batch).mean(dim=2)  # (B, n, D)
            u = F.normalize(F.linear(u, self.to_query.weight.float()), dim=-1)
            keys = F.normalize(F.linear(bank, self.to_key.weight.float()), dim=-1)  # (B, C, K)
            # (B, n, C): the n rows of a group meet their one bank in a batched matmul, no copy of it.
            sim = torch.bmm(u, keys.transpose(1, 2))
            k = min(self.top_k, n_slots)
            _, slot = sim.masked_fill(~valid[:, None], float("-inf")).topk(k, dim=-1)  # (B, n, k), sorted
            n = u.shape[1]
            flat = rearrange(slot, "b n k -> b (n k)")
            found = rearrange(valid.gather(1, flat), "b (n k) -> b n k", n=n)
            values = F.linear(bank, self.to_value.weight.float()).gather(
                1, repeat(flat, "b m -> b m d", d=self.dim)
            )
            values = rearrange(values, "b (n k) d -> b n k d", n=n)
            # Top-k selection has no gradient; a straight-through gate (1 in the forward pass) passes the values'
            # gradient to the similarity, so the key and query projections learn which entries to retrieve.
            chosen = sim.gather(-1, slot)
            gate = 1.0 + chosen - chosen.detach()
            values = values * (gate * found)[..., None]
            frame = torch.where(found, rearrange(state["frame"].gather(1, flat), "b (n k) -> b n k", n=n), -1)
            if k < self.top_k:  # fewer slots than top_k: pad with missing entries
                values = F.pad(values, (0, 0, 0, self.top_k - k))
                frame = F.pad(frame, (0, self.top_k - k), value=-1)
        return rearrange(values, "b n k d -> (b n) k d").to(query.dtype), rearrange(frame, "b n k -> (b n) k")

    def read(self, query: torch.Tensor, state: State) -> torch.Tensor:
        """query (B*n, Q, D) -> (B*n, top_k, D): the most similar entries' values; the state is not changed."""
        return self.read_with_index(query, state)[0]

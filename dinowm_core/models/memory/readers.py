"""How a predictor block uses what a memory store returns (the "readers"), and the memory-free extras.

* :class:`ContextTokens` (memory as context, MAC; Titans section 4.1): each frame's memory read becomes ``M``
  extra tokens, indexed at that frame, that the frame's tokens (and later frames') attend to;
* :class:`MemoryGate` (memory as gate, MAG; Titans section 4.2): the block output mixed per token with the
  memory's answer through a learned sigmoid gate;
* :class:`CrossAttention`: each frame's tokens attend to that frame's memory tokens (a second attention per block);
* :class:`AdaNorm` (AdaMem): the feed-forward's LayerNorm scale and shift conditioned on the pooled memory read
  (zero-initialised: a fresh model is the plain block);
* :class:`PersistentTokens`: learned tokens every frame sees (Titans' persistent memory; no store);
* :class:`AdditiveActions`: the frame's action channels projected and added to its tokens in every block (the
  variant's "additive control").

Each piece is small and causal on its own: its output for frame ``t`` uses frame ``t``'s tokens and the memory
state (frames before the window) only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ContextTokens(nn.Module):
    """``M`` learned queries per frame, shifted by the frame's mean token, read from a retrieval store."""

    def __init__(self, dim: int, num_tokens: int, *, as_tokens: bool = True) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5)
        # Marks memory tokens apart from frames; only reads that become tokens have one (an unused parameter
        # would stall DDP's gradient reduction).
        self.type_embedding = nn.Parameter(torch.zeros(1, 1, dim)) if as_tokens else None

    def queries_for(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, P, D) -> queries (B*T, M, D): one set per frame, from that frame only."""
        mean = frames.mean(dim=2)  # (B, T, D)
        q = self.queries[None, None] + mean[:, :, None]
        return rearrange(q, "b t m d -> (b t) m d")

    def tokens(self, reads: torch.Tensor, batch: int) -> torch.Tensor:
        """reads (B*T, M', D) -> tokens (B, T*M', D), frame-major, marked as memory."""
        tokens = rearrange(reads, "(b t) m d -> b (t m) d", b=batch)
        return tokens if self.type_embedding is None else tokens + self.type_embedding


class MemoryGate(nn.Module):
    """out = h * g + memory * (1 - g), g = sigmoid(W [h; memory]) per token and feature (bias +2: starts ~h)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, 2.0)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """h, memory (B, N, D) -> (B, N, D)"""
        memory = self.norm(memory)
        g = torch.sigmoid(self.gate(torch.cat([h, memory], dim=-1)))
        return h * g + memory * (1 - g)


class CrossAttention(nn.Module):
    """Queries from a frame's tokens, keys/values from that frame's memory tokens (pre-norm, residual outside)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        nn.init.zeros_(self.to_out.weight)  # a fresh block ignores memory; training opens the path
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B*T, P, D) one frame per row, memory (B*T, M, D) that frame's memory -> (B*T, P, D)"""
        q = rearrange(self.to_q(self.norm_q(x)), "b n (h d) -> b h n d", h=self.heads)
        k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                for t in self.to_kv(self.norm_kv(memory)).chunk(2, dim=-1))  # fmt: skip
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class AdaNorm(nn.Module):
    """LayerNorm whose scale and shift are predicted from the frame's pooled memory read (zero-init)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.to_scale_shift = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B, T, P, D), memory (B, T, D) pooled per frame -> (B, T, P, D)"""
        scale, shift = self.to_scale_shift(memory)[:, :, None].chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class PersistentTokens(nn.Module):
    """``n`` learned tokens prepended to every window; every frame attends to them."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(n, dim) * dim**-0.5)

    def forward(self, batch: int) -> torch.Tensor:
        """-> (B, n, D)"""
        return self.tokens[None].expand(batch, -1, -1)


class AdditiveActions(nn.Module):
    """The frame's action channels (the last ``channels`` features of its tokens) projected into the residual
    stream, added in every block: actions keep their say deep in the stack."""

    def __init__(self, dim: int, channels: int, depth: int) -> None:
        super().__init__()
        self.channels = channels
        self.proj = nn.ModuleList(nn.Linear(channels, dim) for _ in range(depth))
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) the predictor's input tokens -> the addition for block ``layer`` (B, N, D)"""
        return self.proj[layer](x[..., -self.channels :])

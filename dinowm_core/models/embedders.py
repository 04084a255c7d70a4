"""Action and proprio embedders (DINO-WM section 2.5).

The reference uses ``Conv1d(in, emb, kernel_size=1)`` along time, which is exactly a per-timestep
``Linear(in, emb)`` with bias; we write it as the Linear (same parameter count: in * emb + emb).
"""

from __future__ import annotations

import torch
from torch import nn


class Embedder(nn.Module):
    """Per-timestep linear embedding: (B, T, in_dim) -> (B, T, emb_dim)."""

    def __init__(self, in_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.emb_dim = emb_dim
        self.proj = nn.Linear(in_dim, emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, in_dim) -> (B, T, emb_dim)"""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"embedder expects last dim {self.in_dim}, got {tuple(x.shape)}")
        return self.proj(x)

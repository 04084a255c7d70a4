"""ViT predictor with a frame-level causal mask (DINO-WM section 2.2).

A pre-norm transformer over the flattened latent sequence ``(B, T*P, D)`` (frame-major). Token ``i`` of frame
``t`` attends to every token of frames ``0..t`` and to nothing later, so the output at frame ``t`` is the
prediction of frame ``t + 1`` given frames ``<= t`` (teacher-forced next-frame prediction at every position).

Differences from the reference, on purpose: the mask is built from a per-token frame index and registered as a
non-persistent buffer (no module globals, no ``.to('cuda')``), attention uses ``F.scaled_dot_product_attention``,
and ``residual=True`` optionally predicts ``input + change`` (off by default, as the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

# Measured on 2 CPU cores: recomputing the attention core costs ~12% of a reference-default step (batch 8) and 5%
# of a 16-patch one, and saves ~0.4 GB per layer at batch 8 / 1.5 GB at batch 32 (reference default): worth it
# only once the fp32 score matrix of one layer reaches this size (batch >= 12 at 3 x 196 tokens, 16 heads).
_RECOMPUTE_MIN_BYTES = 256 * 2**20


def _large_cpu_scores(q: torch.Tensor) -> bool:
    """Whether q (B, H, N, d) on CPU makes a (B, H, N, N) fp32 score matrix of at least _RECOMPUTE_MIN_BYTES."""
    b, h, n, _ = q.shape
    return q.device.type == "cpu" and torch.is_grad_enabled() and b * h * n * n * 4 >= _RECOMPUTE_MIN_BYTES


def frame_causal_mask(frame_index: torch.Tensor) -> torch.Tensor:
    """Boolean (N, N) mask from a per-token frame index: True where query frame >= key frame."""
    return frame_index[:, None] >= frame_index[None, :]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D), mask: (N, N) bool -> (B, N, D)"""
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if p > 0 and q.requires_grad and _large_cpu_scores(q):
            # On CPU, SDPA has no fused kernel with dropout: the math kernel keeps the (B, H, N, N) probabilities,
            # dropout mask and dropped probabilities for backward (fp32 even under bf16 autocast; ~1.5 GB per layer
            # at the reference default, batch 32). Recompute them in backward instead: checkpoint replays the RNG
            # state, so the dropout mask, outputs and gradients are bit-identical. It costs one more attention
            # forward (mostly re-drawing the dropout mask), hence only above _RECOMPUTE_MIN_BYTES.
            out = checkpoint(
                F.scaled_dot_product_attention, q, k, v, attn_mask=mask, dropout_p=p, use_reentrant=False
            )
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViTPredictor(nn.Module):
    """Frame-causal ViT over ``num_frames * num_patches`` tokens of width ``dim``.

    Reference defaults: depth 6, 16 heads x 64, MLP 2048, dropout 0.1, learned positional embedding
    initialised from N(0, 1), final LayerNorm. 20,122,600 parameters at dim 404 with 3 x 196 tokens.
    """

    def __init__(
        self,
        *,
        num_patches: int,
        num_frames: int,
        dim: int,
        depth: int = 6,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        emb_dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.num_frames = num_frames
        self.dim = dim
        self.residual = residual
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, dropout), FeedForward(dim, mlp_dim, dropout)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        frame_index = torch.arange(num_frames).repeat_interleave(num_patches)
        self.register_buffer("mask", frame_causal_mask(frame_index), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) with N <= num_frames * num_patches, frame-major -> (B, N, D)"""
        n = x.shape[1]
        if n > self.pos_embedding.shape[1]:
            raise ValueError(
                f"predictor got {n} tokens; at most {self.num_frames} frames x {self.num_patches} patches fit"
            )
        h = self.emb_dropout(x + self.pos_embedding[:, :n])
        mask = self.mask[:n, :n]
        for attn, ff in self.layers:
            h = h + attn(h, mask)
            h = h + ff(h)
        h = self.norm(h)
        return x + h if self.residual else h

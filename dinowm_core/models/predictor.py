"""ViT predictor with a frame-level causal mask (DINO-WM section 2.2).

A pre-norm transformer over the flattened latent sequence ``(B, T*P, D)`` (frame-major). Token ``i`` of frame
``t`` attends to every token of frames ``0..t`` and to nothing later, so the output at frame ``t`` is the
prediction of frame ``t + 1`` given frames ``<= t`` (teacher-forced next-frame prediction at every position).

Differences from the reference, on purpose: the mask is built from a per-token frame index and registered as a
non-persistent buffer (no module globals, no ``.to('cuda')``), attention uses ``F.scaled_dot_product_attention``,
and ``residual=True`` optionally predicts ``input + change`` (off by default, as the reference).

Two fast paths for planning live next to the plain forward they must equal (tests/core/test_predictor.py):
:meth:`ViTPredictor.forward_last` (KV cache, last-frame pruning, unmasked SDPA) and
:meth:`ViTPredictor.width_aligned` (a frozen copy zero-padded to an aligned width).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

# Measured on 2 CPU cores: recomputing the attention core costs ~12% of a reference-default step (batch 8) and 5%
# of a 16-patch one, and saves ~0.4 GB per layer at batch 8 / 1.5 GB at batch 32 (reference default): worth it
# only once the fp32 score matrix of one layer reaches this size (batch >= 12 at 3 x 196 tokens, 16 heads).
_RECOMPUTE_MIN_BYTES = 256 * 2**20

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, heads, L, dim_head)


def _large_cpu_scores(q: torch.Tensor) -> bool:
    """Whether q (B, H, N, d) on CPU makes a (B, H, N, N) fp32 score matrix of at least _RECOMPUTE_MIN_BYTES."""
    b, h, n, _ = q.shape
    return q.device.type == "cpu" and torch.is_grad_enabled() and b * h * n * n * 4 >= _RECOMPUTE_MIN_BYTES


def frame_causal_mask(frame_index: torch.Tensor) -> torch.Tensor:
    """Boolean (N, N) mask from a per-token frame index: True where query frame >= key frame."""
    return frame_index[:, None] >= frame_index[None, :]


class AlignedLayerNorm(nn.Module):
    """LayerNorm over the first ``dim`` features of a zero-padded width; the padded outputs stay exactly 0."""

    def __init__(self, ln: nn.LayerNorm, padded: int) -> None:
        super().__init__()
        self.dim, self.eps = ln.normalized_shape[0], ln.eps
        pad = (0, padded - self.dim)
        self.weight = nn.Parameter(F.pad(ln.weight.detach(), pad), requires_grad=False)
        self.bias = nn.Parameter(F.pad(ln.bias.detach(), pad), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., padded) with zeros past ``dim`` -> (..., padded); statistics in fp32 as autocast's LayerNorm"""
        xf = x.float()
        var, mean = torch.var_mean(xf[..., : self.dim], dim=-1, unbiased=False, keepdim=True)
        return (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def _pad_linear(lin: nn.Linear, in_pad: int, out_pad: int) -> None:
    """Zero-pad ``lin`` in place by ``in_pad`` input and ``out_pad`` output features (frozen)."""
    with torch.no_grad():
        lin.weight = nn.Parameter(F.pad(lin.weight, (0, in_pad, 0, out_pad)), requires_grad=False)
        if lin.bias is not None:
            lin.bias = nn.Parameter(F.pad(lin.bias, (0, out_pad)), requires_grad=False)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, N, D) -> q, k, v each (B, heads, N, dim_head)"""
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        return tuple(rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))  # type: ignore[return-value]

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame: int | None = None
    ) -> torch.Tensor:
        """q (B, h, Nq, d), k/v (B, h, Nk, d) -> (B, Nq, D), for inference (no attention dropout).

        ``frame`` set: the queries are whole frames of ``frame`` tokens starting at key 0 under the frame-causal
        mask. Each query frame then attends to its key *prefix* without a mask, which lets SDPA pick its fused
        (flash) kernels; a boolean mask would force the slow path that materializes the (Nq, Nk) scores.
        ``frame`` None: every query sees every key.
        """
        if frame is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q[:, :, s : s + frame], k[:, :, : s + frame], v[:, :, : s + frame]
                    )
                    for s in range(0, q.shape[2], frame)
                ],
                dim=2,
            )
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def width_padded(self, padded: int) -> Attention:
        """A frozen copy reading and writing a residual stream zero-padded to ``padded`` features."""
        extra = padded - self.norm.normalized_shape[0]
        out = copy.deepcopy(self).requires_grad_(False).eval()
        out.norm = AlignedLayerNorm(self.norm, padded)
        _pad_linear(out.to_qkv, extra, 0)
        _pad_linear(out.to_out[0], 0, extra)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D), mask: (N, N) bool -> (B, N, D)"""
        q, k, v = self.qkv(x)
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

    def width_padded(self, padded: int) -> FeedForward:
        """A frozen copy reading and writing a residual stream zero-padded to ``padded`` features."""
        norm = self.net[0]
        extra = padded - norm.normalized_shape[0]
        out = copy.deepcopy(self).requires_grad_(False).eval()
        out.net[0] = AlignedLayerNorm(norm, padded)
        _pad_linear(out.net[1], extra, 0)  # dim -> hidden
        _pad_linear(out.net[4], 0, extra)  # hidden -> dim
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)"""
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

    def forward_last(
        self,
        x: torch.Tensor,
        *,
        pos_start: int = 0,
        cache: KVCache | None = None,
        keep_cache: bool = False,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Inference-only next-frame prediction for the last of the new frames ``x``, optionally after cached ones.

        x: (B, T*P, D) new frames (frame-major) at token positions ``pos_start ..``; ``cache`` holds the keys/values
        of the ``pos_start`` earlier tokens. -> (prediction of the frame after the last one (B, P, D), the cache
        extended with x's keys/values if ``keep_cache`` else None). Equals ``forward(all frames)[:, -P:]`` in eval
        mode up to float rounding, with less work:

        * under the frame-causal mask the keys/values of a frame depend only on earlier frames and on their
          positions, so a caller that only appends frames can keep them (``keep_cache``) and push one new frame;
        * only the last frame's output is used, so the final layer computes its queries, MLP and norm only;
        * no mask: each query frame attends to its key prefix (:meth:`Attention.attend`).

        The cache is built with ``torch.cat`` rather than in-place writes, so gradients flow (GD planning).
        """
        p = self.num_patches
        n_new = x.shape[1]
        if n_new > p and (pos_start or cache is not None):
            raise ValueError("several new frames are only supported without cached frames")
        h = x + self.pos_embedding[:, pos_start : pos_start + n_new]
        # Several new frames: frame-causal attention among them (prefix keys per frame); one frame sees all keys.
        frame = p if n_new > p else None
        new_cache: KVCache = []
        depth = len(self.layers)
        for i, (attn, ff) in enumerate(self.layers):
            q, k, v = attn.qkv(h)
            if cache is not None:
                k = torch.cat([cache[i][0], k], dim=2)
                v = torch.cat([cache[i][1], v], dim=2)
            if keep_cache:
                new_cache.append((k, v))
            if i == depth - 1 and n_new > p:
                # Last layer: only the last frame's output is used, and it sees every key (no mask needed).
                h, q, frame = h[:, -p:], q[:, :, -p:], None
            h = h + attn.attend(q, k, v, frame)
            h = h + ff(h)
        h = self.norm(h)
        out = x[:, -p:] + h if self.residual else h
        return out, (new_cache if keep_cache else None)

    def width_aligned(self, multiple: int = 8) -> ViTPredictor:
        """A frozen eval-mode copy whose residual width is zero-padded up to a multiple of ``multiple``.

        Why: the reference width 404 is not a multiple of 8, which sends every bf16 GEMM with K = 404 to slow
        unaligned kernels (measured on an H100: 165 vs 596 TFLOP/s for a 404- vs 416-wide K). The copy runs at
        width 408 and its LayerNorms take their statistics over the real 404 features, so the padded features
        stay exactly zero and the result is unchanged.

        Feed it inputs padded with zeros; its outputs' padded features are exactly zero and the first ``self.dim``
        features equal this predictor's outputs up to float rounding. The copy does not follow later weight
        updates of this predictor.
        """
        padded = -(-self.dim // multiple) * multiple
        extra = padded - self.dim
        if extra == 0:
            return copy.deepcopy(self).requires_grad_(False).eval()
        layers = nn.ModuleList(
            nn.ModuleList([attn.width_padded(padded), ff.width_padded(padded)]) for attn, ff in self.layers
        )
        # The memo hands deepcopy the padded layers, so the unpadded ones are not copied only to be replaced.
        out = copy.deepcopy(self, {id(self.layers): layers}).requires_grad_(False).eval()
        out.dim = padded
        out.pos_embedding = nn.Parameter(F.pad(self.pos_embedding.detach(), (0, extra)), requires_grad=False)
        out.norm = AlignedLayerNorm(self.norm, padded)
        return out

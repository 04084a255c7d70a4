"""DINOv2 vision transformer (Oquab et al., 2023), written to load the official hub checkpoints strictly.

Reference: docs/reference.md section 2.1. Parameter names follow facebookresearch/dinov2 so that
`dinov2_vits14_pretrain.pth` (175 keys for ViT-S/14) loads with `strict=True`. Inference behaviour matches the
hub models exactly: LayerNorm eps 1e-6, exact GELU, LayerScale, no register tokens, and the position embedding
resampled from the native M x M grid with bicubic interpolation at scale `(n + 0.1) / M` without antialiasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# The official models add 0.1 to the target grid before dividing by M so that floor(M * scale) never lands one short.
_INTERPOLATE_OFFSET = 0.1


@dataclass(frozen=True)
class DinoV2Arch:
    embed_dim: int
    depth: int
    num_heads: int
    ffn: Literal["mlp", "swiglu"] = "mlp"


# The hub models are trained at 518 px with patch 14, hence a native 37 x 37 position grid.
ARCHS: dict[str, DinoV2Arch] = {
    "vits14": DinoV2Arch(384, 12, 6),
    "vitb14": DinoV2Arch(768, 12, 12),
    "vitl14": DinoV2Arch(1024, 24, 16),
    "vitg14": DinoV2Arch(1536, 40, 24, ffn="swiglu"),
}


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)"""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        return self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """The ViT-g feed-forward (official `SwiGLUFFNFused`): hidden = 2/3 of the MLP width, rounded up to 8."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn: Literal["mlp", "swiglu"]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = (Mlp if ffn == "mlp" else SwiGLUFFN)(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, P, D)"""
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT. `forward_features` returns the official dict (`x_norm_clstoken`, `x_norm_patchtokens`, ...)."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn: Literal["mlp", "swiglu"] = "mlp",
        patch_size: int = 14,
        img_size: int = 518,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.patch_size = patch_size
        self.num_features = self.embed_dim = embed_dim
        self.native_grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.native_grid**2, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def interpolate_pos_embed(self, h0: int, w0: int) -> torch.Tensor:
        """Position embedding for an h0 x w0 patch grid, resampled exactly as the official code: (1, 1 + h0*w0, D)."""
        m = self.native_grid
        if (h0, w0) == (m, m):
            return self.pos_embed
        pos = self.pos_embed.float()
        grid = rearrange(pos[:, 1:], "1 (h w) d -> 1 d h w", h=m)
        scale = ((h0 + _INTERPOLATE_OFFSET) / m, (w0 + _INTERPOLATE_OFFSET) / m)
        grid = F.interpolate(grid, mode="bicubic", antialias=False, scale_factor=scale)
        assert grid.shape[-2:] == (h0, w0), f"resampled grid {tuple(grid.shape[-2:])} != {(h0, w0)}"
        patch_pos = rearrange(grid, "1 d h w -> 1 (h w) d")
        return torch.cat((pos[:, :1], patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 3, H, W) -> [cls | patches] + pos: (B, 1 + P, D); masks (B, P) bool replaces patches by mask_token."""
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        tokens = self.patch_embed(x)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_embed(height // self.patch_size, width // self.patch_size)

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) -> {x_norm_clstoken: (B, D), x_norm_patchtokens: (B, P, D), x_prenorm: (B, 1 + P, D)}"""
        tokens = self.prepare_tokens(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        return {"x_norm_clstoken": normed[:, 0], "x_norm_patchtokens": normed[:, 1:], "x_prenorm": tokens}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> normalized CLS token (B, D), like the official model without a head."""
        return self.forward_features(x)["x_norm_clstoken"]


def init_weights_(model: DinoVisionTransformer, generator: torch.Generator) -> DinoVisionTransformer:
    """Random initialisation in the official style (truncated normal 0.02), drawn from `generator` only."""
    for name, param in model.named_parameters():
        with torch.no_grad():
            if name == "cls_token":
                nn.init.normal_(param, std=1e-6, generator=generator)
            elif name == "pos_embed" or param.ndim >= 2:
                nn.init.trunc_normal_(param, std=0.02, generator=generator)
            elif name.endswith("bias") or name == "mask_token":
                param.zero_()
            else:  # LayerNorm weights and LayerScale gammas
                param.fill_(1.0)
    return model


def dinov2_vit(arch: str, **overrides: int | str) -> DinoVisionTransformer:
    """A hub architecture ("vits14", ..., "vitg14"), PyTorch default init; `overrides` change constructor args."""
    if arch not in ARCHS:
        raise ValueError(f"unknown DINOv2 architecture {arch!r}; expected one of {sorted(ARCHS)}")
    spec = ARCHS[arch]
    kwargs = dict(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads, ffn=spec.ffn)
    return DinoVisionTransformer(**(kwargs | overrides))

"""Shared helpers for the encoder tests: random DINOv2 weights and the timm / transformers key layouts."""

from __future__ import annotations

import torch
from torch import nn

from dinowm_core.models.dinov2 import DinoVisionTransformer, dinov2_vit


def random_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for `model`'s keys; scales and norms are far from 1 so a dropped or swapped one shows."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in model.state_dict().items():
        if key.endswith("gamma") or (".norm" in f".{key}" and key.endswith("weight")):
            out[key] = 1 + 0.3 * torch.randn(ref.shape, generator=g)
        else:
            out[key] = 0.03 * torch.randn(ref.shape, generator=g)
    return out


def on_meta(factory):
    with torch.device("meta"):
        return factory()


def tiny_vit(**kw) -> DinoVisionTransformer:
    return DinoVisionTransformer(**({"embed_dim": 64, "depth": 2, "num_heads": 2} | kw))


def to_transformers_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the normalizer, written independently from the Hugging Face Dinov2Model names."""
    top = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token"}
    top |= {"pos_embed": "embeddings.position_embeddings"}
    out = {}
    for key, value in sd.items():
        suffix = key.rsplit(".", 1)[-1]
        if key in top:
            out[top[key]] = value
        elif key.startswith("patch_embed.proj."):
            out[f"embeddings.patch_embeddings.projection.{suffix}"] = value
        elif key.startswith("norm."):
            out[f"layernorm.{suffix}"] = value
        else:
            _, index, rest = key.split(".", 2)
            prefix = f"encoder.layer.{index}."
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}attention.attention.{name}.{suffix}"] = part.clone()
            elif rest.startswith("attn.proj."):
                out[f"{prefix}attention.output.dense.{suffix}"] = value
            elif rest in ("ls1.gamma", "ls2.gamma"):
                out[f"{prefix}layer_scale{rest[2]}.lambda1"] = value
            else:  # norm1, norm2, mlp.fc1, mlp.fc2 keep their names
                out[prefix + rest] = value
    return out


def to_timm_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k != "mask_token"}


def vits14_random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official ViT-S/14 layout (built on the meta device: no init cost)."""
    return random_state_dict(on_meta(lambda: dinov2_vit("vits14")), seed=seed)

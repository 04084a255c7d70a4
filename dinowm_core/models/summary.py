"""A human- and machine-readable summary of a world model (parameter counts and tensor shapes)."""

from __future__ import annotations

from typing import Any

from torch import nn

from dinowm_core.models.world_model import WorldModel


def count_params(module: nn.Module | None, *, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def model_summary(wm: WorldModel) -> dict[str, Any]:
    cfg = wm.cfg
    parts = {
        "encoder": wm.encoder,
        "predictor": wm.predictor,
        "decoder": wm.decoder,
        "proprio_encoder": wm.proprio_encoder,
        "action_encoder": wm.action_encoder,
    }
    params = {k: count_params(m) for k, m in parts.items()}
    trainable = {k: count_params(m, trainable_only=True) for k, m in parts.items()}
    p_tokens = cfg.num_visual_tokens + (2 if cfg.concat == "token" else 0)
    shapes = {
        "obs.visual": [cfg.training.batch_size, cfg.num_window_frames, 3, cfg.img_size, cfg.img_size],
        "encoder_input": [3, cfg.encoder_img_size, cfg.encoder_img_size],
        "z": [cfg.training.batch_size, cfg.num_window_frames, p_tokens, wm.emb_dim],
        "predictor_tokens": [cfg.num_hist * p_tokens, wm.emb_dim],
        "act": [cfg.training.batch_size, cfg.num_window_frames, cfg.action_dim],
    }
    lines = [
        f"DINO-WM world model  env={cfg.env.name}  encoder={cfg.encoder.name}/{cfg.encoder.feature}"
        f"  concat={cfg.concat}",
        f"  image {cfg.img_size}px -> encoder input {cfg.encoder_img_size}px -> {cfg.num_visual_tokens} tokens"
        f" x {wm.visual_dim}; latent width {wm.emb_dim}",
        f"  frameskip {cfg.frameskip}, num_hist {cfg.num_hist}, num_pred {cfg.num_pred},"
        f" action {cfg.env.model_action_dim}{' (one-hot)' if cfg.env.num_actions else ''} x {cfg.frameskip}"
        f" = {cfg.action_dim}",
        "  parameters (trainable):",
    ]
    for k in parts:
        lines.append(f"    {k:<16} {params[k]:>12,}  ({trainable[k]:,})")
    lines.append(f"    {'total':<16} {sum(params.values()):>12,}  ({sum(trainable.values()):,})")
    lines.append("  shapes: " + ", ".join(f"{k}={tuple(v)}" for k, v in shapes.items()))
    return {"params": params, "trainable_params": trainable, "shapes": shapes, "text": "\n".join(lines)}

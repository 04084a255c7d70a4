"""Build a world model from a config (the reference's ``train.py: init_models`` without the side effects)."""

from __future__ import annotations

from torch import nn

from dinowm_core.config import Config
from dinowm_core.models.decoder import TransposedConvDecoder, VQVAEDecoder
from dinowm_core.models.embedders import Embedder
from dinowm_core.models.encoders import build_encoder, locate_pretrained_weights
from dinowm_core.models.predictor import ViTPredictor
from dinowm_core.models.world_model import WorldModel


def encoder_weights_source(cfg: Config) -> str | None:
    """Where ``cfg``'s pretrained encoder weights would come from (None: the encoder has none to load). Raises
    FileNotFoundError naming every place searched and the fix; reads no weights."""
    e = cfg.encoder
    if not (e.is_dino and e.pretrained) or e.name == "dinov2_tiny":
        return None
    return locate_pretrained_weights(e.name.removeprefix("dinov2_"), e.weights, e.allow_download)


def build_encoder_from_config(cfg: Config, *, load_weights: bool = True) -> nn.Module:
    """The visual encoder of ``cfg``; ``load_weights=False`` builds the architecture only (random init)."""
    e = cfg.encoder
    pretrained = e.pretrained and load_weights
    return build_encoder(
        e.name,
        e.weights if pretrained else None,
        feature=e.feature,
        pretrained=pretrained,
        allow_download=e.allow_download,
        train=e.train,
        width=e.width,
        depth=e.depth,
        heads=e.heads,
        init_seed=e.init_seed,
        blur=e.blur,
        gain=e.gain,
    )


def _build_decoder(cfg: Config, visual_dim: int) -> nn.Module | None:
    d = cfg.decoder
    if d.name == "none" or not cfg.training.has_decoder:
        return None
    if d.name == "transposed_conv":
        return TransposedConvDecoder(
            emb_dim=visual_dim,
            img_size=cfg.img_size,
            depth=d.depth,
            kernel_size=d.kernel_size,
            stride=d.stride,
        )
    if cfg.num_visual_tokens == 1:
        raise ValueError(
            "decoder=vqvae needs patch tokens; use decoder=transposed_conv with encoder.feature=cls"
        )
    return VQVAEDecoder(
        emb_dim=visual_dim,
        channel=d.channel,
        n_res_block=d.n_res_block,
        n_res_channel=d.n_res_channel,
        quantize=d.quantize,
        n_embed=d.n_embed,
        decay=d.decay,
    )


def build_world_model(cfg: Config, *, encoder: nn.Module | None = None) -> WorldModel:
    """Build the world model described by ``cfg`` (no dataset needed; dims come from the env preset).

    ``encoder`` lets a caller pass an already-built encoder (e.g. when loading a checkpoint).
    """
    if encoder is None:
        encoder = build_encoder_from_config(cfg)
    visual_dim = int(encoder.emb_dim)
    if cfg.concat == "channel":
        proprio_emb, action_emb = cfg.proprio_emb_dim, cfg.action_emb_dim
        dim = visual_dim + proprio_emb * cfg.num_proprio_repeat + action_emb * cfg.num_action_repeat
        num_patches = cfg.num_visual_tokens
    else:
        # Token concat: proprio and action become extra tokens of the visual width (any width works).
        proprio_emb = action_emb = dim = visual_dim
        num_patches = cfg.num_visual_tokens + 2
    p = cfg.predictor
    sizes = {"num_patches": num_patches, "num_frames": cfg.num_hist, "dim": dim, "depth": p.depth, "heads": p.heads,
             "dim_head": p.dim_head, "mlp_dim": p.mlp_dim, "dropout": p.dropout, "emb_dropout": p.emb_dropout,
             "residual": p.residual}  # fmt: skip
    if p.name == "mamba" or p.memory.enabled:
        from dinowm_core.models.memory.predictor import MemoryPredictor

        # Channel concat puts each frame's action embedding in the last features of its tokens.
        channels = action_emb * cfg.num_action_repeat if cfg.concat == "channel" else 0
        predictor: nn.Module = MemoryPredictor(**sizes, memory=p.memory, attention=p.name != "mamba",
                                               action_channels=channels)  # fmt: skip
    else:
        predictor = ViTPredictor(**sizes)
    return WorldModel(
        cfg,
        encoder=encoder,
        predictor=predictor,
        decoder=_build_decoder(cfg, visual_dim),
        proprio_encoder=Embedder(cfg.env.proprio_dim, proprio_emb),
        action_encoder=Embedder(cfg.action_dim, action_emb),
    )

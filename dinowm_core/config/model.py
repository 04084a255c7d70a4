"""The model sections: env, encoder, memory, predictor, decoder."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dinowm_core.config.base import ConfigModel


class EnvConfig(ConfigModel):
    """What the model needs to know about an environment (the simulators live in ``dinowm_core.envs``)."""

    name: Literal[
        "wall", "point_maze", "pusht", "rope", "granular", "reacher", "four_rooms", "memory_maze"
    ] = Field(description="the environment (its simulator is in dinowm_core.envs)")
    action_dim: int = Field(gt=0, description="raw per-step action dim d (before frameskip concat)")
    num_actions: int | None = Field(
        None,
        ge=2,
        description=(
            "discrete envs (four_rooms, memory_maze): size of the action set. The stored action is its index (action_dim 1) "
            "and the model sees its one-hot, so a model step's action is f concatenated one-hots; None = continuous"
        ),
    )
    proprio_dim: int = Field(gt=0, description="proprioceptive state dim (the model's proprio input)")
    state_dim: int = Field(gt=0, description="raw state dim (deformables: 4 x particles)")
    # Pixels per env action unit in the reference's PushT datasets (rel_actions.pth); the importer divides by
    # it. Our stores, models and planners always use env units (what env.step takes).
    action_scale: float = Field(
        1.0,
        gt=0,
        description="pixels per env action unit in the reference's PushT datasets; the importer divides by it",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the env constructor")

    @property
    def model_action_dim(self) -> int:
        """Per-env-step action width the model sees: d, or the one-hot width ``num_actions``."""
        return self.action_dim if self.num_actions is None else self.num_actions

    @model_validator(mode="after")
    def _check(self) -> EnvConfig:
        if self.num_actions is not None and self.action_dim != 1:
            raise ValueError(
                f"env.action_dim must be 1 (the stored action index) when env.num_actions is set, got {self.action_dim}"
            )
        return self


DinoName = Literal["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dinov2_tiny"]


class EncoderConfig(ConfigModel):
    name: Literal[
        "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dinov2_tiny", "conv", "pixels"
    ] = Field(
        description=(
            "DINOv2 ViT-S/B/L/G, the offline dinov2_tiny (random frozen weights), a trainable conv, or pixels "
            "(each 16 x 16 cell's blurred pixels, fixed)"
        )
    )
    feature: Literal["patch", "cls"] = Field("patch", description="patch tokens or the CLS token")
    pretrained: bool = Field(True, description="false = random init (tests, offline demos)")
    weights: str | None = Field(None, description="explicit weights file; else the hub / HF caches")
    allow_download: bool = Field(False, description="let torch.hub download weights if no local copy")
    train: bool = Field(False, description="fine-tune the encoder (the reference keeps it frozen)")
    # Only for the small offline encoders (dinov2_tiny, conv, pixels).
    width: int = Field(
        64,
        gt=0,
        description=(
            "dinov2_tiny / conv: token width; pixels: token width after its random orthogonal projection "
            "(at most 768 = 3 x 16 x 16; 768 keeps the pixels unprojected)"
        ),
    )
    depth: int = Field(2, gt=0, description="dinov2_tiny only: transformer blocks")
    heads: int = Field(2, gt=0, description="dinov2_tiny only: attention heads")
    init_seed: int = Field(
        0,
        description=(
            "dinov2_tiny / conv: seed of the initial (for dinov2_tiny: frozen) weights; pixels: of its projection"
        ),
    )
    blur: float = Field(
        0.0, ge=0, description="pixels only: std in pixels of the Gaussian blur before patching (0: none)"
    )
    gain: float = Field(
        1.0, gt=0, description="pixels only: the features are gain * (pixel - 1), a white pixel is 0"
    )

    @property
    def is_dino(self) -> bool:
        return self.name.startswith("dinov2")

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.name in ("dinov2_tiny", "conv", "pixels") and self.pretrained:
            raise ValueError(
                f"encoder.pretrained: no pretrained weights exist for {self.name}; set it to false"
            )
        if self.name in ("conv", "pixels") and self.feature != "patch":
            raise ValueError(f"encoder.feature: the {self.name} encoder only produces patch tokens")
        if self.name == "dinov2_tiny" and self.width % self.heads:
            raise ValueError("encoder.width must be divisible by encoder.heads")
        if self.name == "pixels":
            if self.train:
                raise ValueError("encoder.train: the pixels encoder has nothing to train; set it to false")
            if self.width > 768:
                raise ValueError(
                    f"encoder.width: the pixels encoder has at most 768 features, got {self.width}"
                )
        return self


class MemoryConfig(ConfigModel):
    """A memory predictor's memory (``dinowm_core/models/memory``): what is stored x how a block reads it.

    store: ``none``; retrieval stores ``neural`` (Titans fast-weight MLP), ``lookup`` (bounded bank, top-k);
    recurrent cells ``ssm`` (diagonal linear SSM), ``selective_ssm`` (Mamba scan), ``ssd`` (Mamba-2 scan:
    one decay per head), ``mlstm`` (xLSTM matrix memory); ``segment`` (Transformer-XL: the previous frames' keys/values). reader: ``context`` (memory tokens
    attended to, MAC), ``gate`` (MAG), ``cross_attention``, ``adanorm``, ``mixer`` (a cell as a temporal mixing
    sublayer in every block), ``none``.
    """

    store: Literal["none", "neural", "lookup", "ssm", "selective_ssm", "ssd", "mlstm", "segment"] = Field(
        "none",
        description="what the memory stores: none, neural, lookup, ssm, selective_ssm, ssd, mlstm or segment",
    )
    reader: Literal["none", "context", "gate", "cross_attention", "adanorm", "mixer"] = Field(
        "none",
        description="how a block reads the memory: context, gate, cross_attention, adanorm, mixer or none",
    )
    per_layer: bool = Field(False, description="one retrieval store per block (mac_layer_mem_vit)")
    tokens: int = Field(4, gt=0, description="memory tokens read per frame (lookup: top-k entries)")
    persistent_tokens: int = Field(0, ge=0, description="learned tokens every frame attends to")
    additive_actions: bool = Field(False, description="project each frame's action channels into every block")
    capacity: int = Field(
        64, gt=0, description="lookup: entries kept per sample (FIFO); segment: frames of keys/values kept"
    )
    state_dim: int = Field(16, gt=0, description="ssm / selective_ssm / ssd: state size per channel")
    hidden: int | None = Field(None, gt=0, description="neural: fast-weight MLP width (None: 2 x width)")
    lr: float = Field(0.1, gt=0, description="neural: inner learning rate at init (data-dependent after)")
    momentum: float = Field(0.9, ge=0, lt=1, description="neural: surprise momentum at init")
    decay: float = Field(0.01, ge=0, lt=1, description="neural: forgetting (weight decay) at init")

    @property
    def enabled(self) -> bool:
        return self.store != "none" or self.persistent_tokens > 0 or self.additive_actions

    @model_validator(mode="after")
    def _check(self) -> MemoryConfig:
        allowed = {
            "none": ("none",),
            "neural": ("context", "gate", "cross_attention", "adanorm"),
            "lookup": ("context", "cross_attention", "adanorm"),
            "ssm": ("mixer", "cross_attention"),
            "selective_ssm": ("mixer", "cross_attention"),
            "ssd": ("mixer", "cross_attention"),
            "mlstm": ("mixer", "cross_attention"),
            "segment": ("none",),
        }[self.store]
        if self.reader not in allowed:
            raise ValueError(
                f"predictor.memory.reader: {self.reader!r} cannot read store {self.store!r} "
                f"(choices: {', '.join(allowed)})"
            )
        if self.per_layer and self.store not in ("neural", "lookup"):
            raise ValueError(
                "predictor.memory.per_layer: only retrieval stores (neural, lookup) come per layer"
            )
        if self.per_layer and self.reader == "gate":
            raise ValueError("predictor.memory.per_layer: the gate reads one memory at the output")
        return self


class PredictorConfig(ConfigModel):
    name: Literal["vit", "mamba"] = Field("vit", description="mamba: no attention (selective scans + mixers)")
    depth: int = Field(6, gt=0, description="transformer blocks")
    heads: int = Field(16, gt=0, description="attention heads")
    dim_head: int = Field(64, gt=0, description="width of one attention head")
    mlp_dim: int = Field(2048, gt=0, description="hidden width of each block's MLP")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the blocks")
    emb_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the input tokens")
    # The reference predicts the next latent directly; residual=true predicts input + change, which
    # trains far faster from scratch on small data (documented deviation, off by default).
    residual: bool = Field(
        False,
        description="predict input + change instead of the next latent (documented deviation, off in the reference)",
    )
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _check(self) -> PredictorConfig:
        scans = ("ssd", "selective_ssm")
        if self.name == "mamba" and (self.memory.store not in scans or self.memory.reader != "mixer"):
            raise ValueError(
                "predictor.name=mamba mixes frames with selective scans only: set predictor.memory.store=ssd "
                "(Mamba-2) or selective_ssm (Mamba-1) and predictor.memory.reader=mixer"
            )
        return self


class DecoderConfig(ConfigModel):
    name: Literal["vqvae", "transposed_conv", "none"] = Field(
        "vqvae", description="vqvae (patch latents), transposed_conv (one-token latents, e.g. CLS) or none"
    )
    channel: int = Field(384, gt=0, description="vqvae: decoder width")
    n_res_block: int = Field(4, ge=0, description="vqvae: residual blocks")
    n_res_channel: int = Field(128, gt=0, description="vqvae: width inside the residual blocks")
    quantize: bool = Field(
        False, description="vqvae: quantize the latents with a codebook (off in the reference)"
    )
    n_embed: int = Field(2048, gt=0, description="vqvae with quantize: codebook entries")
    decay: float = Field(0.99, gt=0, lt=1, description="vqvae with quantize: EMA decay of the codebook")
    latent_loss_weight: float = Field(
        0.25, ge=0, description="vqvae with quantize: weight of the commitment loss"
    )
    # transposed_conv decoder (1-token latents)
    depth: int = Field(
        64, gt=0, description="transposed_conv: channel unit (layers have 32, 8, 4, 2, 1 x depth channels)"
    )
    kernel_size: int = Field(5, gt=0, description="transposed_conv: kernel size of each layer")
    stride: int = Field(3, gt=0, description="transposed_conv: stride of each layer")

"""Typed, validated configuration for dinowm.

A config is built from YAML presets under ``conf/`` (grouped like the reference DINO-WM: ``env=``,
``encoder=``, ``predictor=``, ``decoder=``, ``planner=``) plus Hydra-style dotted overrides::

    load_config(["env=wall", "frameskip=5", "num_hist=1", "predictor.depth=4"])

Every model forbids unknown keys, so a typo fails at load time with a message naming the key.
Configs round-trip through JSON without loss (``Config.model_validate_json(cfg.model_dump_json())``).
Derived values (number of patches, action dim after frameskip) are properties, never stored.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dinowm_core.config_base import ConfigModel

# Re-exported (``X as X``): callers import every section from here.
from dinowm_core.planning_config import CEMConfig as CEMConfig
from dinowm_core.planning_config import EvalConfig as EvalConfig
from dinowm_core.planning_config import GDConfig as GDConfig
from dinowm_core.planning_config import MPCConfig as MPCConfig
from dinowm_core.planning_config import ObjectiveConfig as ObjectiveConfig
from dinowm_core.planning_config import PlannerConfig as PlannerConfig

GROUPS = ("env", "encoder", "predictor", "decoder", "planner")

# The reference hard-codes this: every DINO encoder input is resized to (img_size // 16) * patch_size,
# and the VQ-VAE decoder upsamples its patch grid by 16 (two x4 stages).
DECODER_SCALE = 16


class ConfigError(ValueError):
    """A config could not be built; the message names the offending key."""


class EnvConfig(ConfigModel):
    """What the model needs to know about an environment (the simulators live in ``dinowm_core.envs``)."""

    name: Literal["wall", "point_maze", "pusht", "rope", "granular", "reacher"]
    action_dim: int = Field(gt=0, description="raw per-step action dim d (before frameskip concat)")
    proprio_dim: int = Field(gt=0)
    state_dim: int = Field(gt=0, description="raw state dim (deformables: 4 x particles)")
    # Pixels per env action unit in the reference's PushT datasets (rel_actions.pth); the importer divides by
    # it. Our stores, models and planners always use env units (what env.step takes).
    action_scale: float = Field(1.0, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the env constructor")


DinoName = Literal["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dinov2_tiny"]


class EncoderConfig(ConfigModel):
    name: Literal["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dinov2_tiny", "conv"]
    feature: Literal["patch", "cls"] = Field("patch", description="patch tokens or the CLS token")
    pretrained: bool = Field(True, description="false = random init (tests, offline demos)")
    weights: str | None = Field(None, description="explicit weights file; else the hub / HF caches")
    allow_download: bool = Field(False, description="let torch.hub download weights if no local copy")
    train: bool = Field(False, description="fine-tune the encoder (the reference keeps it frozen)")
    # Only for the small offline encoders (dinov2_tiny, conv).
    width: int = Field(64, gt=0)
    depth: int = Field(2, gt=0)
    heads: int = Field(2, gt=0)
    init_seed: int = 0

    @property
    def is_dino(self) -> bool:
        return self.name.startswith("dinov2")

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.name in ("dinov2_tiny", "conv") and self.pretrained:
            raise ValueError(
                f"encoder.pretrained: no pretrained weights exist for {self.name}; set it to false"
            )
        if self.name == "conv" and self.feature != "patch":
            raise ValueError("encoder.feature: the conv encoder only produces patch tokens")
        if self.name == "dinov2_tiny" and self.width % self.heads:
            raise ValueError("encoder.width must be divisible by encoder.heads")
        return self


class PredictorConfig(ConfigModel):
    name: Literal["vit"] = "vit"
    depth: int = Field(6, gt=0)
    heads: int = Field(16, gt=0)
    dim_head: int = Field(64, gt=0)
    mlp_dim: int = Field(2048, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    emb_dropout: float = Field(0.0, ge=0, lt=1)
    # The reference predicts the next latent directly; residual=true predicts input + change, which
    # trains far faster from scratch on small data (documented deviation, off by default).
    residual: bool = False


class DecoderConfig(ConfigModel):
    name: Literal["vqvae", "transposed_conv", "none"] = "vqvae"
    channel: int = Field(384, gt=0)
    n_res_block: int = Field(4, ge=0)
    n_res_channel: int = Field(128, gt=0)
    quantize: bool = False
    n_embed: int = Field(2048, gt=0)
    decay: float = Field(0.99, gt=0, lt=1)
    latent_loss_weight: float = Field(0.25, ge=0)
    # transposed_conv decoder (1-token latents)
    depth: int = Field(64, gt=0)
    kernel_size: int = Field(5, gt=0)
    stride: int = Field(3, gt=0)


class DataConfig(ConfigModel):
    path: str | None = None
    split_ratio: float = Field(0.9, gt=0, le=1)
    split_seed: int = 42
    n_rollout: int | None = Field(None, gt=0, description="use only the first n trajectories")
    normalize_action: bool = True
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")
    feature_cache: bool = Field(False, description="train from cached encoder features")
    allow_resize: bool = Field(False, description="resize stored frames to img_size when they differ")


class TrainingConfig(ConfigModel):
    seed: int = 0
    epochs: int = Field(100, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(32, gt=0, description="global batch size (split across workers)")
    encoder_lr: float = Field(1e-6, gt=0)
    decoder_lr: float = Field(3e-4, gt=0)
    predictor_lr: float = Field(5e-4, gt=0)
    action_encoder_lr: float = Field(5e-4, gt=0)
    train_predictor: bool = True
    train_decoder: bool = True
    has_decoder: bool = True
    # Reference: no schedule and no clipping. Ours: both available, reference behaviour by default.
    scheduler: Literal["none", "cosine"] = "none"
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    restarts: int = Field(0, ge=0, description="cosine warm restarts")
    # Max global grad norm over all trainable params (None = off, as the reference); 0.5 is a good value.
    grad_clip: float | None = Field(None, gt=0)
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step (splits each batch)")
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, off on CPU"
    )
    compile: bool = Field(False, description="torch.compile the predictor")
    save_every_epochs: int = Field(1, gt=0)
    checkpoint_every_steps: int | None = Field(None, gt=0, description="also checkpoint mid-epoch")
    log_every_steps: int = Field(10, gt=0)
    num_val_rollouts: int = Field(10, ge=0)
    num_reconstruct_samples: int = Field(6, ge=0)
    val_max_batches: int | None = Field(None, gt=0, description="cap on validation batches (None = all)")
    val_at_start: bool = Field(False, description="also validate before the first step (logged at step 0)")
    artifacts_every_epochs: int = Field(
        1, ge=0, description="image grid / rollout video period; 0 = at the end"
    )

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` (training.amp=off) as false


class RayConfig(ConfigModel):
    address: str | None = Field(None, description="None = start an embedded local cluster")
    num_workers: int = Field(1, ge=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    storage_path: str | None = None
    max_failures: int = Field(0, ge=-1)
    num_to_keep: int = Field(2, gt=0)


class MlflowConfig(ConfigModel):
    tracking_uri: str | None = Field(None, description="None = $MLFLOW_TRACKING_URI or a local sqlite store")
    experiment: str = "dinowm"
    register_model: str | None = Field("dinowm-world-model", description="registered model name; None = skip")


class Config(ConfigModel):
    """The whole run configuration. Group fields hold the chosen preset's values."""

    env: EnvConfig
    encoder: EncoderConfig
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)

    img_size: int = Field(224, description="model image size; a multiple of 16 (decoder scale)")
    frameskip: int = Field(5, gt=0)
    num_hist: int = Field(3, gt=0)
    num_pred: int = Field(1, gt=0)
    concat: Literal["channel", "token"] = Field(
        "channel", description="channel: [visual|proprio|action] per patch (reference concat_dim=1)"
    )
    action_emb_dim: int = Field(10, gt=0)
    proprio_emb_dim: int = Field(10, gt=0)
    num_action_repeat: int = Field(1, gt=0)
    num_proprio_repeat: int = Field(1, gt=0)

    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str = "outputs"
    presets: dict[str, str] = Field(default_factory=dict, description="which preset each group came from")

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.img_size % DECODER_SCALE:
            raise ValueError(f"img_size must be a multiple of {DECODER_SCALE}, got {self.img_size}")
        if self.num_pred != 1:
            # z_tgt = z[:, num_pred:] must line up with the num_hist predicted frames.
            raise ValueError(f"num_pred: only 1 is supported (as in the reference), got {self.num_pred}")
        return self

    # ---- derived values -------------------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        """Per-model-step action width after frameskip concatenation (f * d)."""
        return self.env.action_dim * self.frameskip

    @property
    def num_side_patches(self) -> int:
        return self.img_size // DECODER_SCALE

    @property
    def encoder_img_size(self) -> int:
        """Input size of the visual encoder (224 -> 196 for DINOv2/14, as the reference)."""
        if self.encoder.is_dino:
            return self.num_side_patches * 14
        return self.img_size

    @property
    def num_visual_tokens(self) -> int:
        return 1 if self.encoder.feature == "cls" else self.num_side_patches**2

    @property
    def num_window_frames(self) -> int:
        return self.num_hist + self.num_pred

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Config:
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise ConfigError(_format_errors(e)) from None


# ---- presets and overrides ----------------------------------------------------------------------


def conf_dir() -> Path:
    """The preset directory: ``$DINOWM_CONF_DIR`` or ``conf/`` next to the package."""
    env = os.environ.get("DINOWM_CONF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "conf"


def list_presets(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _load_preset(group: str, name: str) -> dict[str, Any]:
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(list_presets(group)) or "none"
        raise ConfigError(f"{group}={name}: no such preset (choices: {choices})")
    return _read_yaml(path)


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {e}") from None


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{'.'.join(parts[: i + 1])}' is not a group of keys")
        node = child
    node[parts[-1]] = value


def _format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<config>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif err["type"] == "value_error":
            lines.append(msg)  # our validators' messages start with the key they are about
        else:
            lines.append(f"{loc}: {msg} (got {err['input']!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def split_overrides(overrides: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        pairs.append((key, value))
    return pairs


def config_dict(overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge presets and overrides into a plain dict (not yet validated)."""
    pairs = split_overrides(overrides)
    if base is None:
        tree = _read_yaml(conf_dir() / "config.yaml")
        defaults = tree.pop("defaults", {})
    else:
        tree = copy.deepcopy(base)
        defaults = {}
    chosen = dict(defaults)
    # Group selections (env=wall) first, so dotted overrides (env.kwargs.x=1) apply on top.
    for key, value in pairs:
        if key in GROUPS:
            chosen[key] = value
    for group, name in chosen.items():
        if group not in GROUPS:
            raise ConfigError(f"defaults: unknown group {group!r} (groups: {', '.join(GROUPS)})")
        tree[group] = _load_preset(group, str(name))
    if chosen:
        tree["presets"] = {**tree.get("presets", {}), **{k: str(v) for k, v in chosen.items()}}
    for key, value in pairs:
        if key in GROUPS:
            continue
        _set_dotted(tree, key, _parse_value(key, value))
    return tree


def load_config(overrides: list[str] | None = None) -> Config:
    """Build a validated config from the presets under ``conf/`` and ``key=value`` overrides."""
    tree = config_dict(overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` overrides (and ``group=preset`` selections) to an existing config."""
    tree = config_dict(overrides, base=json.loads(cfg.model_dump_json()))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None

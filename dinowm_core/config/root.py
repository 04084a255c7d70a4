"""The whole run :class:`Config` and what makes two configs the same model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dinowm_core.config.base import DECODER_SCALE, ConfigModel
from dinowm_core.config.memory_eval import MemoryEvalConfig
from dinowm_core.config.model import DecoderConfig, EncoderConfig, EnvConfig, PredictorConfig
from dinowm_core.config.planning import EvalConfig, PlannerConfig
from dinowm_core.config.training import DataConfig, TrainingConfig


class Config(ConfigModel):
    """The whole run configuration. Group fields hold the chosen preset's values."""

    env: EnvConfig
    encoder: EncoderConfig
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)

    img_size: int = Field(224, description="model image size; a multiple of 16 (decoder scale)")
    frameskip: int = Field(
        5, gt=0, description="env steps per model step: a model action is frameskip env actions side by side"
    )
    num_hist: int = Field(
        3, gt=0, description="frames of history the predictor conditions on (its context window)"
    )
    num_pred: int = Field(
        1, gt=0, description="frames predicted per step (only 1 is supported, as in the reference)"
    )
    concat: Literal["channel", "token"] = Field(
        "channel", description="channel: [visual|proprio|action] per patch (reference concat_dim=1)"
    )
    action_emb_dim: int = Field(
        10, gt=0, description="width of the action embedding joined to every visual patch"
    )
    proprio_emb_dim: int = Field(
        10, gt=0, description="width of the proprio embedding joined to every visual patch"
    )
    num_action_repeat: int = Field(
        1, gt=0, description="copies of the action embedding in each token (reference num_action_repeat)"
    )
    num_proprio_repeat: int = Field(
        1, gt=0, description="copies of the proprio embedding in each token (reference num_proprio_repeat)"
    )

    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    memory_eval: MemoryEvalConfig = Field(default_factory=MemoryEvalConfig)
    output_dir: str = Field("outputs", description="where runs, plans and the local MLflow store are written")
    presets: dict[str, str] = Field(default_factory=dict, description="which preset each group came from")

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.img_size % DECODER_SCALE:
            raise ValueError(f"img_size must be a multiple of {DECODER_SCALE}, got {self.img_size}")
        if self.predictor.memory.additive_actions and self.concat != "channel":
            raise ValueError(
                "predictor.memory.additive_actions needs concat=channel (actions are token channels)"
            )
        if self.data.sequence_length is not None:
            if self.training.rollout_steps > 1:
                raise ValueError("training.rollout_steps > 1 does not combine with data.sequence_length "
                                 "(memory sequence training): use one or the other")  # fmt: skip
            if self.data.sequence_length < self.num_window_frames:
                raise ValueError(f"data.sequence_length ({self.data.sequence_length}) must hold one window of "
                                 f"num_hist + num_pred = {self.num_window_frames} frames")  # fmt: skip
            if self.training.window_stride > self.num_hist:
                raise ValueError(f"training.window_stride ({self.training.window_stride}) must not exceed num_hist "
                                 f"({self.num_hist}): a frame would leave the window unseen by memory")  # fmt: skip
        if self.num_pred != 1:
            # z_tgt = z[:, num_pred:] must line up with the num_hist predicted frames.
            raise ValueError(f"num_pred: only 1 is supported (as in the reference), got {self.num_pred}")
        return self

    # ---- derived values -------------------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        """Per-model-step action width after frameskip concatenation (f * d; discrete: f * num_actions)."""
        return self.env.model_action_dim * self.frameskip

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
        """Frames of one training window: the context, then the frames the loss predicts."""
        return self.num_hist + self.num_pred + self.training.rollout_steps - 1

    @property
    def num_sample_frames(self) -> int:
        """Frames per training sample: ``data.sequence_length`` or one window."""
        return self.data.sequence_length or self.num_window_frames

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


# ---- what makes two configs the same model -----------------------------------------------------------------

# The sections and keys that decide a world model's modules, shapes and the meaning of its weights: a run that
# continues from a checkpoint must keep them. Everything else (data, training schedule, planner, eval, output)
# may change between attempts.
MODEL_KEYS = (
    "env.name", "env.action_dim", "env.num_actions", "env.proprio_dim", "env.state_dim", "env.action_scale",
    "encoder", "predictor", "decoder", "img_size", "frameskip", "num_hist", "num_pred", "concat",
    "action_emb_dim", "proprio_emb_dim", "num_action_repeat", "num_proprio_repeat", "training.has_decoder",
)  # fmt: skip
# Where the encoder's weights are read from, not what they are (the checkpoint keeps their fingerprint).
_WEIGHT_LOCATION_KEYS = ("encoder.weights", "encoder.allow_download")


def _leaves(tree: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _leaves(value, f"{prefix}.{key}")
    return out


def model_differences(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (a's value, b's value)}`` for every :data:`MODEL_KEYS` leaf where ``b`` builds another model."""
    da, db = a.model_dump(), b.model_dump()
    out = {}
    for key in MODEL_KEYS:
        va, vb = da, db
        for part in key.split("."):
            va, vb = va[part], vb[part]
        left, right = _leaves(va, key), _leaves(vb, key)
        for leaf in sorted(left.keys() | right.keys()):
            if leaf not in _WEIGHT_LOCATION_KEYS and left.get(leaf) != right.get(leaf):
                out[leaf] = (left.get(leaf), right.get(leaf))
    return out

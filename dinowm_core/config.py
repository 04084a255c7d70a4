"""The typed, validated configuration schema of dinowm: every section and the whole :class:`Config`.

Every model forbids unknown keys, so a typo fails at load time with a message naming the key. Configs
round-trip through JSON without loss (``Config.model_validate_json(cfg.model_dump_json())``). Derived values
(number of patches, action dim after frameskip) are properties, never stored.

Building a config from the YAML presets under ``conf/`` and dotted ``key=value`` overrides is
``dinowm_core.presets`` (``load_config``, ``apply_overrides``, the per-env planning presets). Planning defaults
follow the reference's ``conf/plan*.yaml`` and ``conf/planner/*.yaml`` (docs/reference.md sections 5.3-5.7).
Where a job runs (Ray, MLflow) is not part of the model: ``ray_jobs.job_config`` holds those settings.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The reference hard-codes this: every DINO encoder input is resized to (img_size // 16) * patch_size,
# and the VQ-VAE decoder upsamples its patch grid by 16 (two x4 stages).
DECODER_SCALE = 16


class ConfigError(ValueError):
    """A config could not be built; the message names the offending key."""


def format_errors(e: ValidationError | list[dict[str, Any]]) -> str:
    """A pydantic validation error (or some of its ``errors()``) as one line per problem, each starting with
    the dotted key."""
    lines = []
    for err in e.errors() if isinstance(e, ValidationError) else e:
        loc = ".".join(str(p) for p in err["loc"]) or "<config>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif err["type"] == "value_error":
            lines.append(msg)  # our validators' messages start with the key they are about
        else:
            lines.append(f"{loc}: {msg} (got {err['input']!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


class ConfigModel(BaseModel):
    """Unknown keys fail at load time (naming the key); assignments are validated like loaded values."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Validate a plain mapping; raises :class:`ConfigError` naming every offending key."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_errors(e)) from None

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Validate a JSON document; raises :class:`ConfigError` naming every offending key."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise ConfigError(format_errors(e)) from None


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


class MemoryConfig(ConfigModel):
    """A memory predictor's memory (``dinowm_core/models/memory``): what is stored x how a block reads it.

    store: ``none``; retrieval stores ``neural`` (Titans fast-weight MLP), ``lookup`` (bounded bank, top-k);
    recurrent cells ``ssm`` (diagonal linear SSM), ``selective_ssm`` (Mamba scan), ``mlstm`` (xLSTM matrix
    memory); ``segment`` (Transformer-XL: the previous frames' keys/values). reader: ``context`` (memory tokens
    attended to, MAC), ``gate`` (MAG), ``cross_attention``, ``adanorm``, ``mixer`` (a cell as a temporal mixing
    sublayer in every block), ``none``.
    """

    store: Literal["none", "neural", "lookup", "ssm", "selective_ssm", "mlstm", "segment"] = "none"
    reader: Literal["none", "context", "gate", "cross_attention", "adanorm", "mixer"] = "none"
    per_layer: bool = Field(False, description="one retrieval store per block (mac_layer_mem_vit)")
    tokens: int = Field(4, gt=0, description="memory tokens read per frame (lookup: top-k entries)")
    persistent_tokens: int = Field(0, ge=0, description="learned tokens every frame attends to")
    additive_actions: bool = Field(False, description="project each frame's action channels into every block")
    capacity: int = Field(
        64, gt=0, description="lookup: entries kept per sample (FIFO); segment: frames of keys/values kept"
    )
    state_dim: int = Field(16, gt=0, description="ssm / selective_ssm: state size per channel")
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
    depth: int = Field(6, gt=0)
    heads: int = Field(16, gt=0)
    dim_head: int = Field(64, gt=0)
    mlp_dim: int = Field(2048, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    emb_dropout: float = Field(0.0, ge=0, lt=1)
    # The reference predicts the next latent directly; residual=true predicts input + change, which
    # trains far faster from scratch on small data (documented deviation, off by default).
    residual: bool = False
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _check(self) -> PredictorConfig:
        if self.name == "mamba" and (self.memory.store != "selective_ssm" or self.memory.reader != "mixer"):
            raise ValueError(
                "predictor.name=mamba mixes frames with selective scans only: set "
                "predictor.memory.store=selective_ssm and predictor.memory.reader=mixer"
            )
        return self


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
    sequence_length: int | None = Field(
        None,
        gt=0,
        description="frames per training sample: a long trajectory cut into consecutive windows with the memory "
        "carried across them (memory predictors); None = one window of num_hist + num_pred frames",
    )


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
    window_stride: int = Field(
        1,
        gt=0,
        description="with data.sequence_length: frames between windows (written to memory per window)",
    )
    tbptt_windows: int | None = Field(
        None, gt=0, description="with data.sequence_length: windows between memory detaches (None: never)"
    )
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, off on CPU"
    )
    compile: bool = Field(False, description="torch.compile the predictor")
    save_every_epochs: int = Field(1, gt=0)
    checkpoint_every_steps: int | None = Field(None, gt=0, description="also checkpoint mid-epoch")
    log_every_steps: int = Field(10, gt=0, description="period of the per-step metrics rows (MLflow)")
    progress_every_s: float = Field(
        30.0,
        ge=0,
        description="seconds between console progress lines of the main rank (step, loss, steps/s, ETA; "
        "validation batches): time-based so a 20-step run and a 100k-step run both print about twice a "
        "minute; 0 = every step. Epoch ends and validation start/end are always printed",
    )
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


# ---- planning and evaluation -----------------------------------------------------------------


class CEMConfig(ConfigModel):
    num_samples: int = Field(300, gt=0)
    topk: int = Field(30, gt=0)
    var_scale: float = Field(1.0, gt=0)
    opt_steps: int = Field(30, gt=0)
    chunk_size: int | None = Field(
        None,
        gt=0,
        description="rollouts per predictor call (B*N split so a plan fits in a few GB); None = all",
    )


class GDConfig(ConfigModel):
    lr: float = Field(1.0, gt=0)
    opt_steps: int = Field(1000, gt=0)
    action_noise: float = Field(0.003, ge=0)
    sample_type: Literal["randn", "zero"] = "randn"
    optimizer: Literal["sgd", "adam"] = "sgd"


class MPCConfig(ConfigModel):
    """Receding horizon. There is no iteration cap: an episode's length is ``eval.budget`` env steps (the
    reference's ``max_iter`` is gone; saved checkpoints that still carry ``max_iter: null`` load unchanged)."""

    n_taken_actions: int = Field(
        5,
        gt=0,
        description="model steps executed per plan (<= planner.horizon); the rest warm-starts the next",
    )


class ObjectiveConfig(ConfigModel):
    mode: Literal["last", "all"] = "last"
    alpha: float = Field(1.0, ge=0, description="weight of the proprio-embedding term")
    base: float = Field(2.0, gt=0, description="per-frame weight base for mode=all")


class PlannerConfig(ConfigModel):
    name: Literal["cem", "gd", "mpc_cem", "mpc_gd"] = "cem"
    horizon: int = Field(5, description="planning horizon in model steps (each = frameskip env steps)")
    cem: CEMConfig = Field(default_factory=CEMConfig)
    gd: GDConfig = Field(default_factory=GDConfig)
    mpc: MPCConfig = Field(default_factory=MPCConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    amp: bool = Field(False, description="bf16 autocast in planning rollouts (fp32 objective)")
    kv_cache: bool = Field(True, description="reuse history keys/values while the context grows (exact)")
    compile: bool = Field(
        False,
        description="torch.compile the planning rollout's predictor steps (fuses norms; pays off on GPU)",
    )
    align: bool | None = Field(
        None,
        description="plan with a copy of the predictor zero-padded to an aligned width (exact); None = on CUDA",
    )

    @model_validator(mode="after")
    def _check(self) -> PlannerConfig:
        if self.horizon < 1:
            raise ValueError(f"planner.horizon must be >= 1, got {self.horizon}")
        if self.cem.topk > self.cem.num_samples:
            raise ValueError(
                f"planner.cem.topk ({self.cem.topk}) must not exceed planner.cem.num_samples "
                f"({self.cem.num_samples})"
            )
        if self.name.startswith("mpc_") and self.mpc.n_taken_actions > self.horizon:
            raise ValueError(
                f"planner.mpc.n_taken_actions ({self.mpc.n_taken_actions}) must not exceed planner.horizon "
                f"({self.horizon}): an MPC step can only execute actions it planned"
            )
        return self


class EvalConfig(ConfigModel):
    """Planning evaluation (reference section 5.1-5.2, 5.7; protocol of docs/paper_results.md).

    The headline protocol is a fixed env-step ``budget`` with no early stop from the simulator; the
    reference's "replan until the simulator reports success" is ``oracle_stop=true`` and is labelled so.
    """

    goal_source: Literal["dset", "random_state", "random_action", "file"] = "random_state"
    # Reference section 5.1: goal_H is both the goal distance and the planning horizon. Here the horizon is
    # planner.horizon and goal_H follows it unless set; see dinowm_core/presets.py.
    goal_H: int | None = Field(
        None,
        gt=0,
        description=(
            "dset/random_action goal distance in model steps (x frameskip env steps); None = planner.horizon "
            "(reference: horizon = goal_H). Set explicitly and different from planner.horizon with an "
            "open-loop planner (cem, gd) and a dset/random_action goal it is a config error: the plan would "
            "stop short of (or run past) the goal. MPC planners replan, so any goal_H works with them"
        ),
    )
    goal_file: str | None = Field(
        None, description="JSON or .npz targets for goal_source=file (never a pickle)"
    )
    n_evals: int = Field(50, gt=0, description="episodes per seed")
    budget: int = Field(50, gt=0, description="env steps per episode (fixed; no simulator early stop)")
    seeds: list[int] = Field(default_factory=lambda: [99], min_length=1, description="evaluation seeds")
    # reference: episode n of seed s uses s*n+1 (seed 0 repeats one episode; seeds 1, 2 overlap);
    # spawn: SeedSequence([s, n]) (distinct episodes). See dinowm_core/planning/goals.py.
    seed_scheme: Literal["spawn", "reference"] = "spawn"
    oracle_stop: bool = Field(
        False,
        description="stop an episode at the first executed chunk that ends in simulator success (labelled)",
    )
    policy: Literal["planner", "random"] = Field("planner", description="random = uniform in the env box")
    n_plot_samples: int = Field(10, ge=0, description="videos for the first n episodes of each seed")
    render_size: int | None = Field(None, gt=0, description="env render size; None = img_size")
    device: str = Field("auto", description="planner device: auto (cuda if available), cpu, cuda, cuda:1")
    num_actors: int | None = Field(None, gt=0, description="Ray env actors; None = one per episode")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.goal_source == "file" and not self.goal_file:
            raise ValueError("eval.goal_file must be set when eval.goal_source=file")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"eval.seeds must be distinct, got {self.seeds}")
        return self


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
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str = "outputs"
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
    "env.name", "env.action_dim", "env.proprio_dim", "env.state_dim", "env.action_scale",
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

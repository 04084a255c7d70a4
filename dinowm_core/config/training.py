"""The data and training sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from dinowm_core.config.base import ConfigModel


class DataConfig(ConfigModel):
    path: str | None = Field(None, description="dataset directory (dinowm data generate / import-dino-wm)")
    split_ratio: float = Field(
        0.9, gt=0, le=1, description="fraction of the trajectories used for training; the rest validate"
    )
    split_seed: int = Field(42, description="seed of the train/val split (by trajectory)")
    n_rollout: int | None = Field(None, gt=0, description="use only the first n trajectories")
    normalize_action: bool = Field(True, description="normalize actions with the dataset's statistics")
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
    seed: int = Field(0, description="seed of the run (initialization, data order)")
    epochs: int = Field(100, gt=0, description="passes over the training split")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(32, gt=0, description="global batch size (split across workers)")
    encoder_lr: float = Field(1e-6, gt=0, description="encoder learning rate (only with encoder.train=true)")
    decoder_lr: float = Field(3e-4, gt=0, description="decoder learning rate (Adam)")
    predictor_lr: float = Field(5e-4, gt=0, description="predictor learning rate (AdamW)")
    action_encoder_lr: float = Field(
        5e-4, gt=0, description="action and proprio embedders' learning rate (AdamW)"
    )
    train_predictor: bool = Field(True, description="train the predictor")
    train_decoder: bool = Field(True, description="train the decoder (on detached latents, as the reference)")
    has_decoder: bool = Field(True, description="build a decoder (reconstructions, rollout videos)")
    decoder_batch_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fraction of each training batch the decoder learns from (its latents are detached, so "
        "it never affects the predictor); 1 = the whole batch, as the reference; less makes steps cheaper",
    )
    decoder_every_steps: int = Field(
        1,
        ge=1,
        description="train the decoder on every n-th optimizer step only (from step 0; its latents are detached, "
        "so the predictor's training is the same, unless training.grad_clip clips the global norm, which counts "
        "the decoder's gradients); 1 = every step, as the reference; more makes the other steps cheaper (on a "
        "CPU the decoder is a large part of a step even on one sample)",
    )
    # Reference: no schedule and no clipping. Ours: both available, reference behaviour by default.
    scheduler: Literal["none", "cosine"] = Field(
        "none", description="learning-rate schedule: none (the reference) or cosine with warmup"
    )
    warmup_frac: float = Field(0.05, ge=0, lt=1, description="cosine: fraction of the steps spent warming up")
    restarts: int = Field(0, ge=0, description="cosine warm restarts")
    # Max global grad norm over all trainable params (None = off, as the reference); 0.5 is a good value.
    grad_clip: float | None = Field(
        None, gt=0, description="max global gradient norm; null = no clipping (the reference)"
    )
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step (splits each batch)")
    window_stride: int = Field(
        1,
        gt=0,
        description="with data.sequence_length: frames between windows (written to memory per window)",
    )
    tbptt_windows: int | None = Field(
        None, gt=0, description="with data.sequence_length: windows between memory detaches (None: never)"
    )
    rollout_steps: int = Field(
        1,
        gt=0,
        description="model steps each training window predicts: 1 = the reference's one-step loss (teacher "
        "forcing); K > 1 also feeds the predictor its own predictions, with the true actions, for K - 1 more "
        "steps as planning does, and averages the latent loss over the K steps (windows of num_hist + K frames)",
    )
    proprio_loss_weight: float = Field(
        1.0,
        gt=0,
        description="weight of the proprio channels' squared errors in the latent loss (1 = a plain MSE over "
        "visual and proprio channels, as the reference); more makes the predictor fit the state dynamics "
        "before the visual features",
    )
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, off on CPU"
    )
    compile: bool = Field(False, description="torch.compile the predictor")
    save_every_epochs: int = Field(1, gt=0, description="checkpoint period in epochs")
    checkpoint_every_steps: int | None = Field(None, gt=0, description="also checkpoint mid-epoch")
    log_every_steps: int = Field(10, gt=0, description="period of the per-step metrics rows (MLflow)")
    progress_every_s: float = Field(
        30.0,
        ge=0,
        description="seconds between console progress lines of the main rank (step, loss, steps/s, ETA; "
        "validation batches): time-based so a 20-step run and a 100k-step run both print about twice a "
        "minute; 0 = every step. Epoch ends and validation start/end are always printed",
    )
    num_val_rollouts: int = Field(
        10, ge=0, description="open-loop rollouts of validation trajectories per validation"
    )
    num_reconstruct_samples: int = Field(6, ge=0, description="frames in the reconstruction image grid")
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

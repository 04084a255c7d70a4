"""Optimizers, LR schedules, gradient clipping and mixed precision (reference DINO-WM section 4.2, step 8).

The reference keeps one optimizer per component, with its own learning rate:

==========================  =========  ===============================  ==========================
component                   optimizer  learning rate                    note
==========================  =========  ===============================  ==========================
predictor                   AdamW      ``training.predictor_lr`` 5e-4   torch defaults (wd 0.01)
action + proprio encoders   AdamW      ``training.action_encoder_lr``   one optimizer for both
decoder                     Adam       ``training.decoder_lr`` 3e-4
encoder                     Adam       ``training.encoder_lr`` 1e-6     only when ``encoder.train``
==========================  =========  ===============================  ==========================

Additions (all off by default, so the defaults reproduce the reference): a cosine schedule with linear warm-up
and optional warm restarts, global-norm gradient clipping over all trainable parameters (0.5 is a good value
when enabled), and bf16 autocast (no loss scaler is needed for bf16).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.optim import Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from dinowm_core.config import Config
from dinowm_core.models.world_model import WorldModel


def _trainable(*modules: nn.Module | None) -> list[nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


def build_optimizers(wm: WorldModel, cfg: Config) -> dict[str, Optimizer]:
    """One optimizer per trained component (names: predictor, action_encoder, decoder, encoder)."""
    t = cfg.training
    opts: dict[str, Optimizer] = {}
    if t.train_predictor and (params := _trainable(wm.predictor)):
        opts["predictor"] = AdamW(params, lr=t.predictor_lr)
    # The reference steps the action/proprio optimizer together with the predictor's (both get z_loss grads).
    if t.train_predictor and (params := _trainable(wm.action_encoder, wm.proprio_encoder)):
        opts["action_encoder"] = AdamW(params, lr=t.action_encoder_lr)
    if t.train_decoder and (params := _trainable(wm.decoder)):
        opts["decoder"] = Adam(params, lr=t.decoder_lr)
    if cfg.encoder.train and (params := _trainable(wm.encoder)):
        opts["encoder"] = Adam(params, lr=t.encoder_lr)
    if not opts:
        raise ValueError("nothing to train: every component is frozen or absent (check training.train_*)")
    return opts


def lr_factor(scheduler: str, total_steps: int, warmup_frac: float, restarts: int) -> Callable[[int], float]:
    """LR multiplier as a function of the optimizer step (0-based).

    ``none``: constant 1 (reference). ``cosine``: linear warm-up from 0 over ``warmup_frac * total_steps`` steps,
    then ``restarts + 1`` equal cosine cycles from 1 down to 0, each restarting at 1 (SGDR without warm-up).
    """
    if scheduler == "none":
        return lambda step: 1.0
    if scheduler != "cosine":
        raise ValueError(f"training.scheduler: unknown schedule {scheduler!r}")
    total = max(1, total_steps)
    warmup = int(warmup_frac * total)
    cycle = max(1, math.ceil((total - warmup) / (restarts + 1)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if step >= total:
            return 0.0
        t = ((step - warmup) % cycle) / cycle
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def build_schedulers(optimizers: dict[str, Optimizer], cfg: Config, total_steps: int) -> dict[str, LambdaLR]:
    """A LambdaLR per optimizer. Its state_dict is (step, base LRs): the multiplier is a plain function of the
    step and the current config, so resuming restores the position exactly (and a changed ``max_steps`` is
    honoured rather than overridden by a pickled closure)."""
    t = cfg.training
    return {
        name: LambdaLR(opt, lr_factor(t.scheduler, total_steps, t.warmup_frac, t.restarts))
        for name, opt in optimizers.items()
    }


def trainable_parameters(optimizers: dict[str, Optimizer]) -> Iterator[torch.Tensor]:
    for opt in optimizers.values():
        for group in opt.param_groups:
            yield from group["params"]


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Global L2 norm of the gradients before clipping; clips in place to ``max_norm`` when it is set."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm is None:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, none on CPU (where it is a measured speed-up only on bf16-capable CPUs);
    ``bf16``: bf16 everywhere; ``off``: none."""
    mode = cfg.training.amp
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def maybe_compile(wm: WorldModel, cfg: Config) -> None:
    """Compile the predictor in place (``Module.compile`` keeps state-dict keys unchanged)."""
    if cfg.training.compile and wm.predictor is not None:
        wm.predictor.compile()

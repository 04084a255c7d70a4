"""Exact-resume state (fixes reference bug 7): optimizers, schedulers, RNG streams and the data position.

Model weights live in the checkpoint's safetensors; ``train_state.pt`` holds the rest, as plain tensors and
Python numbers so that it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

STATE_VERSION = 1


@dataclass
class Position:
    """Where training stands: ``batch_in_epoch`` batches of epoch ``epoch`` (0-based) are done."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def train_state(
    optimizers: dict[str, Optimizer],
    schedulers: dict[str, LRScheduler],
    position: Position,
    *,
    per_worker_batch: int,
    world_size: int,
) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "global_step": position.global_step,
        "per_worker_batch": per_worker_batch,
        "world_size": world_size,
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "rng": rng_state(),
    }


def restore_train_state(
    state: dict[str, Any],
    optimizers: dict[str, Optimizer],
    schedulers: dict[str, LRScheduler],
    *,
    per_worker_batch: int,
    world_size: int,
) -> Position:
    """Load optimizer / scheduler / RNG state; returns the data position. The caller restores the weights."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"train_state version {state.get('version')!r}, expected {STATE_VERSION}")
    if set(state["optimizers"]) != set(optimizers):
        raise ValueError(
            f"train_state has optimizers {sorted(state['optimizers'])}, this run has {sorted(optimizers)} "
            "(did training.train_* or encoder.train change?)"
        )
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
        schedulers[name].load_state_dict(state["schedulers"][name])
    position = Position(state["epoch"], state["batch_in_epoch"], state["global_step"])
    if position.batch_in_epoch and (
        state["per_worker_batch"] != per_worker_batch or state["world_size"] != world_size
    ):
        # The skipped prefix of the epoch is counted in batches of the old layout; refuse rather than guess.
        raise ValueError(
            "cannot resume mid-epoch with a different batch layout "
            f"(checkpoint: {state['world_size']} workers x {state['per_worker_batch']}, "
            f"now: {world_size} x {per_worker_batch}); resume from an end-of-epoch checkpoint"
        )
    set_rng_state(state["rng"])
    return position

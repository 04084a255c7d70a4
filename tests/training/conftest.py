"""A tiny Wall dataset generated once per session, and helpers to train on it fast."""

from __future__ import annotations

from pathlib import Path

import pytest

# 16 episodes x 40 steps at 64 px: 21 windows per episode (f=5, 4 frames), 14 train / 2 val episodes.
# 40 steps (not 30) so that validation rollouts exist: they need > (2 + num_hist + 1) * f steps.
EPISODES, STEPS = 16, 40


@pytest.fixture(scope="session")
def wall_dataset(tmp_path_factory) -> Path:
    from dinowm_core.data.generate import generate

    out = tmp_path_factory.mktemp("data") / "wall"
    generate("wall", EPISODES, STEPS, out, seed=0, img_size=64, progress=False)
    return out


@pytest.fixture
def train_overrides(tiny_overrides, wall_dataset, tmp_path) -> list[str]:
    """TINY model on the session dataset: single process, CPU, no DataLoader workers, quiet."""
    return [
        *tiny_overrides,
        f"data.path={wall_dataset}",
        "data.num_workers=0",
        "training.batch_size=8",
        "training.num_val_rollouts=2",
        "training.val_max_batches=2",
        "training.num_reconstruct_samples=2",
        "training.amp=off",
        f"output_dir={tmp_path}",
    ]

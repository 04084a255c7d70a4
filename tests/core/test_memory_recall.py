"""Memory that matters: on a cue needed 23 frames after it was shown (held-out sequences), the neural-memory, SSM
and segment-recurrence predictors recall it, and the memory-free ViT does no better than chance."""

from __future__ import annotations

import pytest
import torch

from dinowm_core.config import MemoryConfig
from dinowm_core.models.memory import recall
from dinowm_core.models.memory.predictor import MemoryPredictor
from dinowm_core.models.predictor import ViTPredictor

pytestmark = pytest.mark.slow

P, D, W, L, K = 4, 16, 3, 24, 4
SIZES = {"num_patches": P, "num_frames": W, "dim": D, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32,
         "dropout": 0.0}  # fmt: skip
MEMORIES = {
    "mac_mem_vit": MemoryConfig(store="neural", reader="context", tokens=4, persistent_tokens=4),
    "ssm_vit": MemoryConfig(store="ssm", reader="mixer", state_dim=8),
    "transformerxl": MemoryConfig(store="segment", capacity=L),
}


@pytest.fixture(scope="module")
def data():
    cues = recall.make_cues(K, P, D)
    return recall.make_data(cues, 2000, L, seed=1), recall.make_data(cues, 400, L, seed=2)


def _accuracy(predictor, data) -> tuple[float, float, float]:
    train, test = data
    recall.train(predictor, train, steps=300)
    return recall.accuracy(predictor, test)


@pytest.fixture(scope="module")
def vit_accuracy(data):
    torch.manual_seed(0)
    return _accuracy(ViTPredictor(**SIZES), data)


def test_without_memory_the_cue_is_a_guess(vit_accuracy):
    rate, lo, hi = vit_accuracy
    assert lo <= 1 / K <= hi, vit_accuracy


@pytest.mark.parametrize("preset", sorted(MEMORIES))
def test_memory_recalls_the_cue(preset, data, vit_accuracy):
    torch.manual_seed(0)
    rate, lo, hi = _accuracy(MemoryPredictor(**SIZES, memory=MEMORIES[preset]), data)
    assert lo > vit_accuracy[2], (preset, (rate, lo, hi), vit_accuracy)
    assert rate > 0.6

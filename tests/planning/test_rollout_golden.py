"""The planning rollout reproduces the format-1 golden outputs (tests/fixtures/v1) bit for bit."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinowm_core import load_world_model
from dinowm_core.planning.rollout import Rollout

V1 = Path(__file__).parents[1] / "fixtures" / "v1"


@pytest.fixture(scope="module")
def golden():
    """-> (world model, golden tensors, encoded context of 1 frame, of 3 frames)."""
    torch.set_num_threads(2)
    gold = load_file(str(V1 / "plans_v1.safetensors"))
    wm = load_world_model(V1 / "ckpt_v1").eval()
    with torch.no_grad():
        z_obs3 = wm.encode_obs({"visual": gold["obs_visual"], "proprio": gold["obs_proprio"]})
    return wm, gold, {k: v[:, -1:] for k, v in z_obs3.items()}, z_obs3


@pytest.mark.parametrize(
    ("name", "kw"),
    [("fp32", {}), ("nokv", {"kv_cache": False}), ("align", {"align": True}), ("bf16", {"amp": True})],
)
def test_rollout_is_bit_identical(golden, name, kw):
    wm, gold, z_obs1, _ = golden
    rollout = Rollout(wm, **kw)
    with torch.no_grad():
        for _ in range(2):  # the second call reuses what the first built (the aligned copy)
            z_obs, z = rollout(z_obs1, gold["roll_act"])
            assert torch.equal(z_obs["visual"], gold[f"roll_{name}/visual"])
            assert torch.equal(z, gold[f"roll_{name}/z"])


def test_rollout_from_three_context_frames_is_bit_identical(golden):
    wm, gold, _, z_obs3 = golden
    with torch.no_grad():
        _, z = Rollout(wm)(z_obs3, gold["roll_act"])
    assert torch.equal(z, gold["roll_ctx/z"])

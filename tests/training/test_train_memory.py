"""Training on long trajectories: windows with the memory carried across them, through the plain loss and fit."""

from __future__ import annotations

import pytest
import torch
from train_helpers import RecordingHooks

from dinowm_core import load_config
from dinowm_core.models.build import build_world_model
from dinowm_core.presets import list_presets
from dinowm_core.training.loop import fit

SMALL = ["predictor.depth=2", "predictor.heads=2", "predictor.dim_head=8", "predictor.mlp_dim=32", "predictor.dropout=0.0",
         "predictor.memory.state_dim=4", "predictor.memory.capacity=8"]  # fmt: skip


def _batch(cfg, frames: int, b: int = 2):
    g = torch.Generator().manual_seed(0)
    obs = {"visual": torch.rand(b, frames, 3, cfg.img_size, cfg.img_size, generator=g) * 2 - 1,
           "proprio": torch.randn(b, frames, cfg.env.proprio_dim, generator=g)}  # fmt: skip
    return obs, torch.randn(b, frames, cfg.action_dim, generator=g)


@pytest.mark.parametrize("preset", ["mac_mem_vit", "ssm_vit", "transformerxl", "vit"])
def test_a_sequence_is_cut_into_windows_that_carry_memory(tiny_overrides, preset):
    cfg = load_config([*tiny_overrides, f"predictor={preset}", *SMALL, "data.sequence_length=10",
                       "training.window_stride=2"])  # fmt: skip
    torch.manual_seed(0)
    wm = build_world_model(cfg).train()
    obs, act = _batch(cfg, 10)
    loss, metrics = wm.loss(obs, act)
    assert int(metrics["windows"]) == (10 - 4) // 2 + 1 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.predictor.parameters())
    # The windows' mean equals the windows' losses computed one by one with the memory handed along.
    with torch.no_grad():
        z = wm.encode(obs, act)
        memory, losses = wm.init_memory(2), []
        for s in range(0, 7, 2):
            pred, memory = wm.predict_memory(z[:, s : s + 3], memory, commit=2)
            losses.append(wm._z_loss(pred, z[:, s + 1 : s + 4], {}))
        torch.testing.assert_close(metrics["z_loss"], torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)


def test_truncated_backprop_cuts_the_memory_between_windows(tiny_overrides):
    base = [
        *tiny_overrides,
        "predictor=ssm_vit",
        *SMALL,
        "data.sequence_length=8",
        "training.window_stride=1",
    ]
    grads = {}
    for tbptt in ("null", "1"):
        cfg = load_config([*base, f"training.tbptt_windows={tbptt}"])
        torch.manual_seed(0)
        wm = build_world_model(cfg).train()
        obs, act = _batch(cfg, 8)
        loss, _ = wm.loss(obs, act)
        loss.backward()
        grads[tbptt] = torch.cat([p.grad.flatten() for p in wm.predictor.parameters() if p.grad is not None])
    assert not torch.allclose(grads["null"], grads["1"])  # later windows' losses reach earlier windows' cells


def test_sequence_settings_are_checked(tiny_overrides):
    from dinowm_core.config import ConfigError

    with pytest.raises(ConfigError, match="data.sequence_length"):
        load_config([*tiny_overrides, "data.sequence_length=2"])
    with pytest.raises(ConfigError, match="window_stride"):
        load_config([*tiny_overrides, "data.sequence_length=12", "training.window_stride=5"])


def test_fit_trains_a_memory_predictor_on_sequences(train_overrides, tmp_path):
    cfg = load_config([*train_overrides, "predictor=mac_mem_vit", *SMALL, "data.sequence_length=6",
                       "training.window_stride=1", "training.max_steps=6", "training.val_at_start=true"])  # fmt: skip
    hooks = RecordingHooks(tmp_path / "run")
    result = fit(cfg, hooks)
    assert result.steps == 6 and result.checkpoint is not None
    first = hooks.logged[0][1]["val/loss"]
    assert result.metrics["val/loss"] < first  # it learns, through windows that share a memory
    assert result.metrics["train/windows"] == 3  # 6 frames: windows at 0, 1, 2


@pytest.mark.parametrize("preset", [p for p in list_presets("predictor") if p != "vit_small"])
def test_every_parameter_learns_from_a_sequence(tiny_overrides, preset):
    """DDP (Ray Train with several workers) stalls on a parameter that gets no gradient."""
    cfg = load_config([*tiny_overrides, f"predictor={preset}", *SMALL, "data.sequence_length=8",
                       "training.window_stride=2"])  # fmt: skip
    torch.manual_seed(0)
    wm = build_world_model(cfg).train()
    obs, act = _batch(cfg, 8)
    loss, _ = wm.loss(obs, act, decode_pred=False)
    loss.backward()
    assert [n for n, p in wm.predictor.named_parameters() if p.requires_grad and p.grad is None] == []

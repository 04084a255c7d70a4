"""Optimizers per component, LR schedule shape, gradient clipping, gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import Adam, AdamW

from dinowm_core import build_world_model, load_config
from dinowm_core.training.loop import LossModule, accumulate_gradients
from dinowm_core.training.optim import (
    amp_dtype,
    build_optimizers,
    build_schedulers,
    clip_gradients,
    lr_factor,
)


def test_optimizers_as_the_reference(tiny_overrides):
    cfg = load_config(tiny_overrides)
    wm = build_world_model(cfg)
    opts = build_optimizers(wm, cfg)
    assert set(opts) == {"predictor", "action_encoder", "decoder"}  # frozen encoder: none
    assert type(opts["predictor"]) is AdamW and opts["predictor"].defaults["weight_decay"] == 0.01
    assert opts["predictor"].defaults["betas"] == (0.9, 0.999) and opts["predictor"].defaults["lr"] == 5e-4
    assert type(opts["decoder"]) is Adam and opts["decoder"].defaults["lr"] == 3e-4
    ids = {id(p) for g in opts["action_encoder"].param_groups for p in g["params"]}
    want = {id(p) for m in (wm.action_encoder, wm.proprio_encoder) for p in m.parameters()}
    assert ids == want
    all_ids = [id(p) for o in opts.values() for g in o.param_groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == sum(p.requires_grad for p in wm.parameters())
    cfg = load_config([*tiny_overrides, "encoder.train=true"])
    opts = build_optimizers(build_world_model(cfg), cfg)
    assert type(opts["encoder"]) is Adam and opts["encoder"].defaults["lr"] == 1e-6


def test_cosine_schedule_shape():
    f = lr_factor("cosine", total_steps=100, warmup_frac=0.1, restarts=0)
    warm = [f(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] > 0 and warm[-1] < 1  # linear ramp, strictly below the peak
    assert f(10) == 1.0 and f(55) == pytest.approx(0.5, abs=0.02)
    decay = [f(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False)) and decay[-1] < 0.01
    g = lr_factor("cosine", total_steps=100, warmup_frac=0.0, restarts=1)
    assert g(0) == 1.0 and g(49) < 0.01 and g(50) == 1.0  # warm restart half way
    assert lr_factor("none", 100, 0.1, 0)(57) == 1.0
    # As a LambdaLR on a real optimizer, and its state restores the position exactly.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = AdamW([p], lr=2.0)
    cfg = load_config(
        ["env=wall", "encoder=dino_tiny", "training.scheduler=cosine", "training.warmup_frac=0.1"]
    )
    sched = build_schedulers({"x": opt}, cfg, total_steps=100)["x"]
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0 * f(s) for s in range(30)])
    opt2 = AdamW([p], lr=2.0)
    sched2 = build_schedulers({"x": opt2}, cfg, total_steps=100)["x"]
    opt2.load_state_dict(opt.state_dict())  # as restore_train_state: optimizer (holds the current lr), then
    sched2.load_state_dict(sched.state_dict())  # scheduler (holds the step)
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.0 * f(30))
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.0 * f(31))


def test_grad_clip_caps_the_global_norm():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert clip_gradients(params, None).item() == pytest.approx(5.0)  # off: reports, leaves grads alone
    assert params[1].grad[1].item() == 4.0
    assert clip_gradients(params, 0.5).item() == pytest.approx(5.0)  # returns the pre-clip norm
    after = math.sqrt(sum(float(p.grad.square().sum()) for p in params))
    assert after == pytest.approx(0.5, rel=1e-4)
    assert params[0].grad[0].item() == pytest.approx(0.3, rel=1e-4)  # direction kept


def test_grad_accumulation_equals_full_batch(tiny_overrides):
    cfg = load_config(tiny_overrides)  # TINY predictor has dropout 0: both passes are deterministic
    wm = build_world_model(cfg).train()
    model = LossModule(wm)
    g = torch.Generator().manual_seed(0)
    obs = {
        "visual": torch.rand(6, 4, 3, 64, 64, generator=g) * 2 - 1,
        "proprio": torch.randn(6, 4, 2, generator=g),
    }
    act = torch.randn(6, 4, 10, generator=g)
    params = [p for p in wm.parameters() if p.requires_grad]

    def grads(parts):
        wm.zero_grad(set_to_none=True)
        metrics = accumulate_gradients(model, obs, act, parts, torch.device("cpu"), None)
        return [p.grad.clone() for p in params], metrics

    full, m_full = grads(1)
    half, m_half = grads(2)
    assert sum(float(x.abs().sum()) for x in full) > 0
    for a, b in zip(full, half, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m_half["loss"], m_full["loss"], rtol=1e-5, atol=0)


def test_amp_modes(tiny_overrides):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = load_config(tiny_overrides)
    assert amp_dtype(cfg, cpu) is None and amp_dtype(cfg, cuda) is torch.bfloat16
    assert amp_dtype(load_config([*tiny_overrides, "training.amp=bf16"]), cpu) is torch.bfloat16
    assert amp_dtype(load_config([*tiny_overrides, "training.amp=off"]), cuda) is None

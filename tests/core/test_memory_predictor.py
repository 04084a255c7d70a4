"""Every memory preset: builds, is causal within and across windows, keeps samples apart, reads without writing,
uses its memory, and round-trips a checkpoint exactly."""

from __future__ import annotations

import pytest
import torch

from dinowm_core import load_config
from dinowm_core.models.build import build_world_model
from dinowm_core.models.memory.base import select_state
from dinowm_core.presets import list_presets
from tests.conftest import TINY

MEMORY_PRESETS = [p for p in list_presets("predictor") if p not in ("vit", "vit_small")]
SMALL = ["predictor.depth=2", "predictor.heads=2", "predictor.dim_head=8", "predictor.mlp_dim=32",
         "predictor.dropout=0.0", "predictor.memory.state_dim=4", "predictor.memory.capacity=8"]  # fmt: skip
STORES = [p for p in MEMORY_PRESETS if p not in ("vit_persistent", "additive_control_vit")]


def _predictor(preset: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = load_config([*TINY, f"predictor={preset}", *SMALL])
    return build_world_model(cfg).predictor.eval()


def _frames(pred, b: int = 2, t: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, pred.num_patches, pred.dim, generator=g)


def _run(pred, frames: torch.Tensor, state=None, stride: int = 1):
    """Slide a window of num_frames over the frames, writing ``stride`` frames per step -> (outputs per absolute
    frame: {frame: (B, P, D)} from the last window that predicted at it, final state)."""
    b, t, p, d = frames.shape
    w = pred.num_frames
    state = pred.init_state(b) if state is None else state
    outs: dict[int, torch.Tensor] = {}
    for start in range(0, t - w + 1, stride):
        window = frames[:, start : start + w].reshape(b, w * p, d)
        out, state = pred.forward_memory(window, state, commit=stride)
        for i in range(w):
            outs.setdefault(start + i, out[:, i * p : (i + 1) * p])
    return outs, state


def test_every_design_preset_exists():
    names = {"vit_persistent", "additive_control_vit", "mag_mem_vit", "mac_mem_vit", "mac_layer_mem_vit",
             "lookup_mem_vit", "ssm_vit", "ssm_ca", "adamem", "mlstm_simple", "mamba", "transformerxl"}  # fmt: skip
    assert names <= set(MEMORY_PRESETS)


@pytest.mark.parametrize("preset", MEMORY_PRESETS)
def test_shapes_and_the_plain_call(preset):
    pred = _predictor(preset)
    x = _frames(pred, t=pred.num_frames).reshape(2, -1, pred.dim)
    out = pred(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out2, state = pred.forward_memory(x, None, commit=0)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)  # forward = an empty memory, nothing written
    for v in state.values():
        assert v.shape[0] == 2


@pytest.mark.parametrize("preset", MEMORY_PRESETS)
def test_causal_within_and_across_windows(preset):
    pred = _predictor(preset)
    frames = _frames(pred)
    base, _ = _run(pred, frames)
    for j in (2, 4):  # perturb one frame: no output at an earlier frame may move, in any window
        bumped = frames.clone()
        bumped[:, j] += 3.0
        outs, _ = _run(pred, bumped)
        for f in range(j):
            torch.testing.assert_close(outs[f], base[f], rtol=0, atol=1e-5, msg=f"frame {f} saw frame {j}")
        assert not torch.allclose(outs[j], base[j])


@pytest.mark.parametrize("preset", MEMORY_PRESETS)
def test_samples_never_touch_each_other(preset):
    pred = _predictor(preset)
    frames = _frames(pred)
    both, state = _run(pred, frames)
    for i in range(2):
        alone, state_i = _run(pred, frames[i : i + 1])
        for f in both:
            torch.testing.assert_close(both[f][i : i + 1], alone[f], rtol=0, atol=1e-5)
        for k, v in select_state(state, [i]).items():
            torch.testing.assert_close(v, state_i[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", STORES)
def test_memory_reaches_the_window_and_reads_do_not_write(preset):
    pred = _predictor(preset)
    with torch.no_grad():  # as after training: the zero-initialised memory paths (gates, adaptive norms) open
        for param in pred.parameters():
            param.add_(0.05 * torch.randn_like(param))
    past, window = _frames(pred, seed=2), _frames(pred, t=pred.num_frames, seed=3).reshape(2, -1, pred.dim)
    _, state = _run(pred, past)
    before = {k: v.clone() for k, v in state.items()}
    with_memory, unchanged = pred.forward_memory(window, state, commit=0)
    empty, _ = pred.forward_memory(window, None, commit=0)
    assert not torch.allclose(with_memory, empty, atol=1e-6)  # what left the window still matters
    for k, v in before.items():  # a read-only call (a planning candidate) leaves the memory as it was
        assert torch.equal(state[k], v) and torch.equal(unchanged[k], v)


@pytest.mark.parametrize("preset", MEMORY_PRESETS)
def test_a_checkpoint_round_trips_exactly(preset, tmp_path):
    from dinowm_core.training.checkpoint import load_world_model, save_world_model

    torch.manual_seed(0)
    cfg = load_config([*TINY, f"predictor={preset}", *SMALL])
    wm = build_world_model(cfg).eval()
    save_world_model(wm, tmp_path / "ckpt")
    loaded = load_world_model(tmp_path / "ckpt").eval()
    frames = _frames(wm.predictor)
    a, sa = _run(wm.predictor, frames)
    b, sb = _run(loaded.predictor, frames)
    for f in a:
        torch.testing.assert_close(a[f], b[f], rtol=0, atol=0)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


@pytest.mark.parametrize("preset", MEMORY_PRESETS)
def test_trains_a_step(preset):
    torch.manual_seed(0)
    cfg = load_config([*TINY, f"predictor={preset}", *SMALL])
    wm = build_world_model(cfg).train()
    pred = wm.predictor
    x = _frames(pred, t=pred.num_frames).reshape(2, -1, pred.dim)
    out, state = pred.forward_memory(x, pred.init_state(2), commit=1)
    out2, _ = pred.forward_memory(x, state, commit=1)
    (out.square().mean() + out2.square().mean()).backward()
    grads = [p.grad for p in pred.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2

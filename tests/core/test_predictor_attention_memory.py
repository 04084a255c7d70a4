"""The CPU training path recomputes the attention core in backward (predictor.py): same numbers, less memory."""

import pytest
import torch

from dinowm_core.models import predictor as predictor_mod
from dinowm_core.models.predictor import ViTPredictor

N_PATCHES, N_FRAMES, HEADS = 6, 3, 2


def _step(pred: ViTPredictor, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list]:
    """One seeded training forward/backward -> (output, gradients, shapes of the tensors saved for backward)."""
    shapes: list[tuple[torch.Size, torch.dtype]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append((t.shape, t.dtype))
        return t

    pred.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = pred(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in pred.parameters()], shapes


@pytest.mark.parametrize("amp", [False, True])
def test_recomputed_attention_is_bit_identical_and_keeps_no_score_matrix(monkeypatch, amp):
    monkeypatch.setattr(predictor_mod, "_RECOMPUTE_MIN_BYTES", 0)  # recompute at this tiny size too
    torch.manual_seed(0)
    pred = ViTPredictor(num_patches=N_PATCHES, num_frames=N_FRAMES, dim=16, depth=2, heads=HEADS, dim_head=8,
                        mlp_dim=32, dropout=0.3).train()  # fmt: skip
    x = torch.randn(2, N_FRAMES * N_PATCHES, 16)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)
    with ctx:
        out, grads, shapes = _step(pred, x)
    # Without the recomputation (plain SDPA call): the math kernel saves (B, H, N, N) tensors.
    monkeypatch.setattr(predictor_mod, "checkpoint", lambda fn, *a, use_reentrant, **kw: fn(*a, **kw))
    with ctx:
        ref_out, ref_grads, ref_shapes = _step(pred, x)
    assert torch.equal(out, ref_out)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))
    scores = torch.Size([2, HEADS, N_FRAMES * N_PATCHES, N_FRAMES * N_PATCHES])
    # The test would notice if the math kernel stopped saving them (fp32 probabilities even under bf16 autocast).
    assert (scores, torch.float32) in ref_shapes
    assert all(shape != scores for shape, _ in shapes)


def test_small_score_matrices_are_kept():
    """Below the threshold (the 16-patch config) recomputing costs more than the memory it saves."""
    q = torch.randn(32, 16, 3 * 16, 64)
    assert not predictor_mod._large_cpu_scores(q)
    assert predictor_mod._large_cpu_scores(torch.randn(32, 16, 3 * 196, 1))  # reference default, batch 32
    with torch.no_grad():
        assert not predictor_mod._large_cpu_scores(torch.randn(32, 16, 3 * 196, 1))

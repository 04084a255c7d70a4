import pytest
import torch

from dinowm_core.models.predictor import ViTPredictor, frame_causal_mask


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_reference_parameter_count():
    pred = ViTPredictor(num_patches=196, num_frames=3, dim=404)  # depth 6, 16 x 64, MLP 2048
    assert _count(pred) == 20_122_600


def test_mask_is_block_lower_triangular_and_not_saved():
    m = frame_causal_mask(torch.arange(3).repeat_interleave(2))
    expected = torch.tensor(
        [[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0]] * 2 + [[1, 1, 1, 1, 1, 1]] * 2, dtype=torch.bool
    )
    assert torch.equal(m, expected)
    pred = ViTPredictor(num_patches=2, num_frames=3, dim=8, depth=1, heads=2, dim_head=4, mlp_dim=8)
    assert "mask" not in pred.state_dict()
    assert torch.equal(pred.mask, expected)


@pytest.mark.parametrize("num_frames", [1, 2, 3])
@pytest.mark.parametrize("num_patches", [1, 5, 18])
@pytest.mark.parametrize("residual", [False, True])
def test_causality(num_frames, num_patches, residual):
    pred = _small(num_patches, num_frames, dim=16, residual=residual)
    x = torch.randn(2, num_frames * num_patches, 16)
    base = pred(x)
    for t in range(num_frames):
        x2 = x.clone()
        x2[:, t * num_patches : (t + 1) * num_patches] += torch.randn(2, num_patches, 16)
        out = pred(x2)
        # frames before t are untouched, frame t and later do change
        torch.testing.assert_close(out[:, : t * num_patches], base[:, : t * num_patches], rtol=0, atol=1e-6)
        assert (out[:, t * num_patches :] - base[:, t * num_patches :]).abs().max() > 1e-3


def test_shorter_context_uses_the_top_left_corner():
    pred = ViTPredictor(num_patches=4, num_frames=3, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32).eval()
    x = torch.randn(1, 12, 16)
    # Causality means the first two frames' outputs do not depend on whether frame 3 is present.
    torch.testing.assert_close(pred(x)[:, :8], pred(x[:, :8]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at most 3 frames"):
        pred(torch.randn(1, 16, 16))


def test_dropout_only_in_training():
    pred = ViTPredictor(
        num_patches=2, num_frames=2, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, dropout=0.5
    )
    x = torch.randn(1, 4, 16)
    pred.eval()
    assert torch.equal(pred(x), pred(x))
    pred.train()
    assert not torch.equal(pred(x), pred(x))


def test_any_device_meta():
    # No device literals: the mask follows the module.
    pred = ViTPredictor(num_patches=2, num_frames=2, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32).to(
        "meta"
    )
    assert pred.mask.device.type == "meta"
    assert pred(torch.randn(1, 4, 16, device="meta")).shape == (1, 4, 16)


def _small(num_patches=3, num_frames=3, dim=20, residual=False):
    torch.manual_seed(0)
    return ViTPredictor(
        num_patches=num_patches,
        num_frames=num_frames,
        dim=dim,
        depth=2,
        heads=2,
        dim_head=8,
        mlp_dim=32,
        residual=residual,
    ).eval()


@pytest.mark.parametrize("num_frames", [1, 2, 3])
@pytest.mark.parametrize("num_patches", [1, 5])
@pytest.mark.parametrize("residual", [False, True])
def test_forward_last_equals_forward(num_frames, num_patches, residual):
    pred = _small(num_patches, num_frames, residual=residual)
    p = num_patches
    x = torch.randn(2, num_frames * p, 20)
    with torch.no_grad():
        for t in range(1, num_frames + 1):
            ref = pred(x[:, : t * p])[:, -p:]
            out, cache = pred.forward_last(x[:, : t * p])
            assert cache is None
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        # With a cache: push one frame at a time, as a rollout whose context grows does.
        cache = None
        for t in range(num_frames):
            out, cache = pred.forward_last(
                x[:, t * p : (t + 1) * p], pos_start=t * p, cache=cache, keep_cache=True
            )
            torch.testing.assert_close(out, pred(x[:, : (t + 1) * p])[:, -p:], rtol=0, atol=1e-5)
            assert len(cache) == 2 and cache[0][0].shape == (2, 2, (t + 1) * p, 8)
        # The cache of a whole window equals the one built frame by frame.
        _, full = pred.forward_last(x, keep_cache=True)
    for (k, v), (k2, v2) in zip(full, cache, strict=True):
        torch.testing.assert_close(k, k2, rtol=0, atol=1e-5)
        torch.testing.assert_close(v, v2, rtol=0, atol=1e-5)


def test_forward_last_gradients_equal_forward():
    """Gradients flow through the cache (GD planning differentiates the rollout)."""
    pred = _small()
    x = torch.randn(2, 9, 20, requires_grad=True)
    (ref,) = torch.autograd.grad(pred(x)[:, -3:].square().sum(), x)
    _, cache = pred.forward_last(x[:, :6], keep_cache=True)  # two frames cached, then the third one
    out, _ = pred.forward_last(x[:, 6:], pos_start=6, cache=cache)
    (got,) = torch.autograd.grad(out.square().sum(), x)
    assert ref[:, :6].abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_forward_last_several_new_frames_need_an_empty_cache():
    pred = _small()
    x = torch.randn(1, 6, 20)
    _, cache = pred.forward_last(x[:, :3], keep_cache=True)
    with pytest.raises(ValueError, match="several new frames"):
        pred.forward_last(x, pos_start=3, cache=cache)


@pytest.mark.parametrize(("dim", "multiple", "padded"), [(20, 8, 24), (20, 16, 32), (24, 8, 24)])
@pytest.mark.parametrize("residual", [False, True])
def test_width_aligned_equals_plain_predictor(dim, multiple, padded, residual):
    pred = _small(dim=dim, residual=residual)
    aligned = pred.width_aligned(multiple)
    assert aligned is not pred and aligned.dim == padded and not aligned.training
    assert not any(p.requires_grad for p in aligned.parameters())
    assert pred.dim == dim and all(p.requires_grad for p in pred.parameters())  # the original is untouched
    x = torch.randn(2, 9, dim)
    xp = torch.nn.functional.pad(x, (0, padded - dim))
    with torch.no_grad():
        ref = pred(x)
        out = aligned(xp)
        last, _ = aligned.forward_last(xp)
    # The padded features stay exactly zero; the real ones equal the plain predictor's.
    assert torch.count_nonzero(out[..., dim:]) == 0 and torch.count_nonzero(last[..., dim:]) == 0
    torch.testing.assert_close(out[..., :dim], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(last[..., :dim], ref[:, -3:], rtol=0, atol=1e-5)


def test_width_aligned_copy_does_not_follow_later_updates():
    pred = _small()
    aligned = pred.width_aligned()
    x = torch.nn.functional.pad(torch.randn(1, 3, 20), (0, 4))
    with torch.no_grad():
        before = aligned(x)
        pred.norm.bias.add_(1.0)
        assert torch.equal(aligned(x), before)

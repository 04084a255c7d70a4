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
    torch.manual_seed(0)
    pred = ViTPredictor(
        num_patches=num_patches,
        num_frames=num_frames,
        dim=16,
        depth=2,
        heads=2,
        dim_head=8,
        mlp_dim=32,
        residual=residual,
    ).eval()
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

"""Planning objective on hand-made tensors (reference section 5.3, bug 14 fixed)."""

import pytest
import torch

from dinowm_core.planning.objectives import objective


def _pred(vis_err_per_frame, prop_err_per_frame):
    """Latents whose squared error to a zero goal is the given per-frame constant."""
    v = torch.tensor(vis_err_per_frame).sqrt()[None, :, None, None].expand(1, -1, 4, 3)
    p = torch.tensor(prop_err_per_frame).sqrt()[None, :, None].expand(1, -1, 2)
    return {"visual": v.clone(), "proprio": p.clone()}


GOAL = {"visual": torch.zeros(1, 1, 4, 3), "proprio": torch.zeros(1, 1, 2)}


def test_last_mode_uses_only_the_final_frame_and_alpha():
    z = _pred([100.0, 50.0, 3.0], [100.0, 100.0, 2.0])
    assert objective(z, GOAL, mode="last", alpha=1.0).item() == pytest.approx(5.0)
    assert objective(z, GOAL, mode="last", alpha=0.5).item() == pytest.approx(4.0)
    assert objective(z, GOAL, mode="last", alpha=0.0).item() == pytest.approx(3.0)


def test_last_mode_is_a_mean_over_patches_and_features():
    z = {"visual": torch.zeros(1, 2, 4, 3), "proprio": torch.zeros(1, 2, 2)}
    z["visual"][0, -1, 0, 0] = 2.0  # one element of 12 off by 2 -> mean SE 4/12
    z["proprio"][0, -1, 1] = 1.0  # one element of 2 off by 1 -> 1/2
    assert objective(z, GOAL, alpha=1.0).item() == pytest.approx(4 / 12 + 0.5)


def test_all_mode_weights_sum_to_one_without_the_reference_1_over_h_factor():
    z = _pred([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    # equal errors in every frame -> the weighted sum is that error (reference would give 1/3)
    assert objective(z, GOAL, mode="all").item() == pytest.approx(1.0)
    z = _pred([1.0, 2.0, 4.0], [0.0, 0.0, 8.0])
    w = torch.tensor([1.0, 2.0, 4.0]) / 7  # base 2
    expected = (w * torch.tensor([1.0, 2.0, 4.0 + 0.5 * 8.0])).sum().item()
    assert objective(z, GOAL, mode="all", alpha=0.5, base=2.0).item() == pytest.approx(expected)
    w3 = torch.tensor([1.0, 3.0, 9.0]) / 13
    expected3 = (w3 * torch.tensor([1.0, 2.0, 12.0])).sum().item()
    assert objective(z, GOAL, mode="all", alpha=1.0, base=3.0).item() == pytest.approx(expected3)


def test_goal_broadcasts_over_the_batch_and_rows_are_independent():
    z = {"visual": torch.randn(5, 3, 4, 3), "proprio": torch.randn(5, 3, 2)}
    goal = {"visual": torch.randn(1, 1, 4, 3), "proprio": torch.randn(1, 1, 2)}
    full = objective(z, goal)
    assert full.shape == (5,)
    for i in range(5):
        one = objective({k: v[i : i + 1] for k, v in z.items()}, goal)
        torch.testing.assert_close(one, full[i : i + 1])


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        objective(_pred([1.0], [1.0]), GOAL, mode="first")

"""Image metrics (reference conventions: PSNR peak 1.0 on [-1, 1], SSIM 11x11 Gaussian sigma 1.5) and rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from dinowm_core.training.metrics import gaussian_window, psnr, sample_rollouts, ssim


def test_psnr_known_values():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert psnr(x, x).item() == pytest.approx(100.0)  # identical: capped, finite
    y = x + 0.1  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB with the reference's peak of 1.0
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-3)
    assert psnr(x, y, peak=2.0).item() == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-3)


def test_ssim_known_values():
    w = gaussian_window()
    assert w.shape == (11, 11) and w.sum().item() == pytest.approx(1.0)
    assert w[5, 5] > w[5, 0] and torch.allclose(w, w.T)
    x = torch.rand(2, 3, 32, 32)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    # Constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (contrast/structure terms are C2/C2 = 1).
    a, b, c1 = 0.2, 0.6, 0.01**2
    got = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)).item()
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)  # float32
    # Independent noise images share no structure: SSIM near 0.
    g = torch.Generator().manual_seed(0)
    n1, n2 = torch.randn(1, 1, 64, 64, generator=g), torch.randn(1, 1, 64, 64, generator=g)
    assert abs(ssim(n1, n2).item()) < 0.05
    assert ssim(x, x + 0.05 * torch.randn_like(x)).item() < ssim(x, x + 0.01 * torch.randn_like(x)).item() < 1


class _Traj:
    """Trajectories whose frame t holds t, so the sampled frames/actions can be checked."""

    def __init__(self, lengths):
        self.lengths = lengths

    def __len__(self):
        return len(self.lengths)

    def get_seq_length(self, i):
        return self.lengths[i]

    def __getitem__(self, i):
        T = self.lengths[i]
        t = torch.arange(T, dtype=torch.float32)
        obs = {"visual": t.view(T, 1, 1, 1).expand(T, 3, 2, 2), "proprio": torch.stack([t, t + i], 1)}
        return obs, torch.stack([t, -t], 1), torch.zeros(T, 2), {}


def test_rollout_sampling_is_seeded_and_follows_the_reference():
    ds = _Traj([20, 40, 60])  # 20 steps is too short for min horizon 2 + num_hist = 5 at f = 5
    import numpy as np

    before = np.random.get_state()[1].copy()
    a = sample_rollouts(ds, 6, frameskip=5, num_hist=3, seed=0)
    b = sample_rollouts(ds, 6, frameskip=5, num_hist=3, seed=0)
    assert (np.random.get_state()[1] == before).all()  # the global NumPy RNG is untouched
    assert len(a) == 6
    for r, r2 in zip(a, b, strict=True):
        assert torch.equal(r.obs["visual"], r2.obs["visual"]) and torch.equal(r.act, r2.act)
        frames = r.obs["visual"][:, 0, 0, 0]
        h = len(frames) - 1
        assert h >= 5 and torch.equal(frames - frames[0], 5 * torch.arange(h + 1, dtype=torch.float32))
        assert r.act.shape == (h, 10)
        assert torch.equal(r.act[:, 0], frames[:-1])  # chunk k starts with the action taken at frame k
    assert sample_rollouts(_Traj([20]), 3, frameskip=5, num_hist=3, seed=0) == []


def test_predicted_image_metrics_score_the_last_predicted_frame_only():
    """Reference: img_*_pred compares the decoded prediction of frame num_hist with frame num_hist."""
    from dinowm_core import build_world_model, load_config
    from dinowm_core.training.loop import _image_batch
    from dinowm_core.training.metrics import image_metrics
    from tests.conftest import TINY

    cfg = load_config(TINY)
    torch.manual_seed(0)
    wm = build_world_model(cfg).eval()
    t = cfg.num_window_frames
    obs = {"visual": torch.rand(2, t, 3, cfg.img_size, cfg.img_size) * 2 - 1,
           "proprio": torch.randn(2, t, cfg.env.proprio_dim)}  # fmt: skip
    metrics, images = _image_batch(wm, obs, torch.randn(2, t, cfg.action_dim))
    want = image_metrics(images["pred"][:, -1:], obs["visual"][:, cfg.num_hist :], "pred")
    assert metrics["img_mse_pred"] == pytest.approx(want["img_mse_pred"])
    everything = image_metrics(images["pred"], obs["visual"][:, 1:], "pred")
    assert metrics["img_mse_pred"] != pytest.approx(everything["img_mse_pred"])

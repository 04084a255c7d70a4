"""Validation metrics: image quality of decoded frames and open-loop rollout errors (reference section 4.3).

Image metrics follow the reference's ``metrics/image_metrics.eval_images`` conventions, which matter for
comparing numbers with it:

* PSNR uses a **peak of 1.0 on [-1, 1] images** (reference quirk, section 7 "Metrics"): ``10 log10(1 / MSE)``.
  That is 6.02 dB lower than a PSNR with the true peak-to-peak range 2. Identical images would give +inf;
  the MSE is floored at 1e-10, so PSNR is capped at 100 dB (finite values log cleanly).
* SSIM uses an 11 x 11 Gaussian window with sigma 1.5 and the constants C1 = 0.01^2, C2 = 0.03^2 (data range
  1.0, as the reference applies it to [-1, 1] images), averaged over channels and positions. Ours uses
  "valid" windows (no zero padding at the borders), which makes constant images exact.

Rollout errors (reference ``openloop_rollout``): from a trajectory, take h + 1 frames ``f`` raw steps apart and
the h frameskip-grouped actions between them; imagine the last frame from ``num_hist`` context frames (suffix
``""``) and from 1 (suffix ``_1framestart``); the error is the MSE between the imagined and the encoded real
last frame, for the visual tokens and the proprio embedding. Deviation (a fix): the reference reseeds the
global NumPy RNG on every call; here a private ``numpy.random.Generator`` seeded once picks the trajectories,
so validation never disturbs training randomness. The same trajectories are used every epoch (as the
reference's reseeding also does), which keeps the curve comparable across epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from dinowm_core.models.world_model import WorldModel

PSNR_MSE_FLOOR = 1e-10  # caps PSNR at 100 dB with peak 1.0


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a.float(), b.float())


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Mean-over-batch MSE based PSNR in dB (reference: peak 1.0 even on [-1, 1] images)."""
    return 10.0 * torch.log10(peak**2 / mse(a, b).clamp_min(PSNR_MSE_FLOOR))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(
    a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Mean SSIM of image batches (..., C, H, W) (Wang et al. 2004, Gaussian window, valid positions only)."""
    a = a.float().reshape(-1, *a.shape[-3:])
    b = b.float().reshape(-1, *b.shape[-3:])
    c = a.shape[1]
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: images of {tuple(a.shape[-2:])} px are smaller than the {window} px window")
    w = gaussian_window(window, sigma).to(a.device).expand(c, 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def image_metrics(pred: torch.Tensor, target: torch.Tensor, suffix: str) -> dict[str, float]:
    """``img_{mse,psnr,ssim}_<suffix>`` of decoded frames vs targets, both (..., 3, H, W) in [-1, 1]."""
    return {
        f"img_mse_{suffix}": mse(pred, target).item(),
        f"img_psnr_{suffix}": psnr(pred, target).item(),
        f"img_ssim_{suffix}": ssim(pred, target).item(),
    }


# ---- open-loop rollouts ---------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One validation rollout: h + 1 real frames and their h actions (a (h, f*d) tensor)."""

    obs: dict[str, torch.Tensor]  # visual (h+1, 3, H, W), proprio (h+1, Dp)
    act: torch.Tensor


def sample_rollouts(traj_dataset, num: int, *, frameskip: int, num_hist: int, seed: int) -> list[Rollout]:
    """``num`` rollouts as the reference samples them (min horizon 2 + num_hist, random start and horizon),
    drawn from a private generator: the same ``seed`` gives the same rollouts. Trajectories too short for
    the minimum horizon are skipped (the reference would loop forever if all were too short)."""
    if num == 0 or len(traj_dataset) == 0:
        return []
    rng = np.random.default_rng(seed)
    f, min_h = frameskip, 2 + num_hist
    lengths = np.array([traj_dataset.get_seq_length(i) for i in range(len(traj_dataset))])
    # The reference accepts a trajectory when its max horizon from the chosen start exceeds min_h.
    usable = np.flatnonzero(lengths - 1 >= (min_h + 1) * f)
    if len(usable) == 0:
        return []
    out = []
    for _ in range(num):
        i = int(rng.choice(usable))
        T = int(lengths[i])
        while True:
            start = int(rng.integers(0, T - min_h * f - 1)) if min_h * f + 1 < T else 0
            max_h = (T - start - 1) // f
            if max_h > min_h:
                break
        h = int(rng.integers(min_h, max_h + 1))
        obs, act, _, _ = traj_dataset[i]
        frames = slice(start, start + h * f + 1, f)
        out.append(
            Rollout(
                obs={k: v[frames] for k, v in obs.items()},
                act=rearrange(act[start : start + h * f], "(n f) d -> n (f d)", f=f),
            )
        )
    return out


@torch.no_grad()
def rollout_errors(
    wm: WorldModel, rollouts: list[Rollout], device: torch.device
) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
    """Mean ``z_{visual,proprio}_err_rollout{,_1framestart}`` over ``rollouts``, plus the first rollout's
    imagined and real frames (``{"imagined", "real"}`` (h+1, 3, H, W)) when the model has a decoder."""
    sums: dict[str, float] = {}
    frames = None
    for k, r in enumerate(rollouts):
        obs = {key: v.unsqueeze(0).to(device) for key, v in r.obs.items()}
        act = r.act.unsqueeze(0).to(device)
        goal = wm.encode_obs({key: v[:, -1:] for key, v in obs.items()})
        for n_past, suffix in ((wm.num_hist, ""), (1, "_1framestart")):
            obs0 = {key: v[:, :n_past] for key, v in obs.items()}
            z_obs, _ = wm.rollout(obs0, act)
            for part in ("visual", "proprio"):
                err = F.mse_loss(z_obs[part][:, -1:].float(), goal[part].float()).item()
                key = f"z_{part}_err_rollout{suffix}"
                sums[key] = sums.get(key, 0.0) + err
            if k == 0 and n_past == 1 and wm.decoder is not None:
                imagined, _ = wm.decode_visual(z_obs["visual"])
                frames = {"imagined": imagined[0].float().cpu(), "real": obs["visual"][0].float().cpu()}
    metrics = {key: v / len(rollouts) for key, v in sums.items()} if rollouts else {}
    return metrics, frames


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """Drop NaN / inf values (trackers reject them)."""
    return {k: v for k, v in metrics.items() if math.isfinite(v)}

"""Training artifacts: a reconstruction grid PNG, an open-loop rollout PNG and an mp4 video (reference section 4.3).

Images are [-1, 1] tensors (..., 3, H, W); files are written with imageio (pillow for PNG, PyAV for mp4).
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from einops import rearrange


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (..., 3, H, W) -> uint8 (..., H, W, 3)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def save_reconstruction_grid(
    path: Path, truth: torch.Tensor, pred: torch.Tensor, recon: torch.Tensor, num_pred: int
) -> Path:
    """Rows per sample: ground truth, prediction, reconstruction (reference ``train_e*_b0.png``).

    truth, recon (B, T, 3, H, W); pred (B, T - num_pred, 3, H, W), shown under the frames it predicts with
    blank (white) frames first.
    """
    blank = torch.ones_like(truth[:, :num_pred])
    rows = torch.stack([truth, torch.cat([blank, pred], dim=1), recon], dim=1)  # (B, 3, T, 3, H, W)
    grid = rearrange(to_uint8(rows), "b r t h w c -> (b r h) (t w) c")
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid)
    return path


def save_rollout(
    path_png: Path, path_mp4: Path, imagined: torch.Tensor, real: torch.Tensor, fps: int = 4
) -> None:
    """Imagined | real frames side by side: a PNG strip (row 1 imagined, row 2 real) and an mp4 video.

    imagined, real (T, 3, H, W) in [-1, 1].
    """
    im, re = to_uint8(imagined), to_uint8(real)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path_png, rearrange(np.stack([im, re]), "r t h w c -> (r h) (t w) c"))
    video = np.concatenate([im, re], axis=2)  # (T, H, 2W, 3)
    # yuv420p needs even sizes; our frames are multiples of 16.
    iio.imwrite(path_mp4, video, plugin="pyav", codec="libx264", fps=fps)

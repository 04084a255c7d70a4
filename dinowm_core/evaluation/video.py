"""Episode videos for planning evaluations (reference section 5.7, "Plots"): [real | imagined | goal].

Each video frame is one env step: the real frame, the decoded imagined frame of the current model step
(each imagined frame held for ``frameskip`` env steps, as the reference repeats it), and the goal frame.
Written as H.264 mp4 through imageio's pyav plugin; frame sides are padded to even sizes (yuv420p needs it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FPS = 12  # reference


def _fit(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w, 3) -> (size, size, 3) by nearest-neighbour index mapping (display only)."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    rows = (np.arange(size) * frame.shape[0] // size).clip(0, frame.shape[0] - 1)
    cols = (np.arange(size) * frame.shape[1] // size).clip(0, frame.shape[1] - 1)
    return frame[rows][:, cols]


def episode_panels(
    real: np.ndarray,
    imagined: np.ndarray | None,
    goal: np.ndarray,
    frameskip: int,
    maps: np.ndarray | None = None,
) -> np.ndarray:
    """real (T+1, H, W, 3), imagined (M+1, h, w, 3) or None, goal (H, W, 3) -> (T+1, H, 3W, 3) uint8.

    ``maps`` (T+1, S, S, 3): a partially observed env's top-down frames, a fourth panel; every panel is then
    drawn at the map's size S (the model's small frames scaled up)."""
    size = real.shape[1] if maps is None else maps.shape[1]
    goal = _fit(goal, size)
    frames = []
    for t, frame in enumerate(real):
        if imagined is not None and len(imagined):
            dream = _fit(imagined[min(t // frameskip, len(imagined) - 1)], size)
        else:
            dream = np.zeros_like(frame)  # no decoder: a black panel
        panels = [_fit(frame, size), _fit(dream, size), goal]
        if maps is not None:
            panels.append(_fit(maps[min(t, len(maps) - 1)], size))
        frames.append(np.concatenate(panels, axis=1))
    video = np.stack(frames)
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return video


def write_episode_video(
    path: str | Path,
    real: np.ndarray,
    imagined: np.ndarray | None,
    goal: np.ndarray,
    frameskip: int,
    *,
    maps: np.ndarray | None = None,
) -> Path:
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = episode_panels(real, imagined, goal, frameskip, maps)
    iio.imwrite(path, video, plugin="pyav", codec="libx264", fps=FPS)
    return path

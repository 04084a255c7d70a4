"""A synthetic task that needs memory: recall a cue shown ``length - 1`` frames before it is needed.

Each sequence shows one of ``num_cues`` fixed cue frames first, then distractor frames of noise; its last frame
shows the cue again. A predictor reads the sequence window by window (``num_frames`` frames, memory carried
across windows, the frames that leave each window written) and must predict that last frame from the window
before it, which holds only noise: without memory the best it can do is guess (chance = 1 / num_cues). Scored on
held-out sequences (same cues, fresh noise) by which cue the prediction is nearest to, with a 95% Wilson interval.

Used by ``tests/core/test_memory_recall.py`` and ``bench/memory.py``; the numbers are in BENCHMARKS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RecallData:
    frames: torch.Tensor  # (N, L, P, D)
    cue: torch.Tensor  # (N,) index of the cue each sequence shows
    cues: torch.Tensor  # (K, P, D)


def make_cues(num_cues: int, tokens: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(K, P, D) fixed cue frames, unit RMS."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_cues, tokens, dim, generator=g)


def make_data(cues: torch.Tensor, num: int, length: int, seed: int, noise: float = 1.0) -> RecallData:
    """``num`` sequences of ``length`` frames: cue, ``length - 2`` noise frames, the cue again. The first cue
    frame is marked (feature 0 raised by 4, as a shown cue stands out from the scene), so that attention over
    remembered frames can find it by content."""
    g = torch.Generator().manual_seed(seed)
    k = cues.shape[0]
    cue = torch.randint(0, k, (num,), generator=g)
    frames = noise * torch.randn(num, length, *cues.shape[1:], generator=g)
    frames[:, 0] = cues[cue] + 0.1 * torch.randn(num, *cues.shape[1:], generator=g)
    frames[:, 0, :, 0] += 4.0
    frames[:, -1] = cues[cue]
    return RecallData(frames, cue, cues)


def predict_last(predictor: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Slide the predictor's window over frames (B, L, P, D), writing one window-length stride at a time ->
    its prediction of the last frame from the window before it (B, P, D)."""
    b, length, p, d = frames.shape
    w = predictor.num_frames
    stride = w
    memory = predictor.init_state(b, device=frames.device) if hasattr(predictor, "init_state") else None
    starts = list(range(0, length - 1 - w + 1, stride))
    if starts[-1] != length - 1 - w:  # the last window must end just before the recalled frame
        starts.append(length - 1 - w)
    out = None
    for i, s in enumerate(starts):
        window = frames[:, s : s + w].reshape(b, w * p, d)
        commit = min(stride, starts[i + 1] - s) if i + 1 < len(starts) else 0
        if memory is None:
            out = predictor(window)
        else:
            out, memory = predictor.forward_memory(window, memory, commit=commit)
    return out[:, -p:]


def train(predictor: torch.nn.Module, data: RecallData, *, steps: int, batch: int = 32, lr: float = 3e-3,
          seed: int = 0) -> list[float]:  # fmt: skip
    """Adam on the last frame's MSE; returns the losses."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(predictor.parameters(), lr=lr)
    predictor.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, data.frames.shape[0], (batch,), generator=g)
        pred = predict_last(predictor, data.frames[idx])
        loss = F.mse_loss(pred, data.frames[idx, -1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(predictor.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def accuracy(predictor: torch.nn.Module, data: RecallData, batch: int = 256) -> tuple[float, float, float]:
    """Fraction of sequences whose predicted last frame is nearest to the right cue -> (rate, ci low, ci high)."""
    predictor.eval()
    hits = 0
    for s in range(0, data.frames.shape[0], batch):
        pred = predict_last(predictor, data.frames[s : s + batch])
        dist = ((pred[:, None] - data.cues[None]) ** 2).flatten(2).sum(-1)  # (B, K)
        hits += int((dist.argmin(1) == data.cue[s : s + batch]).sum())
    n = data.frames.shape[0]
    return (hits / n, *wilson(hits, n))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))

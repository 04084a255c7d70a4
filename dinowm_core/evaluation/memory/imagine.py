"""The model side of the memory tasks: what a world model imagines along a known path after reading an episode.

``ModelImaginer.imagine(ep, probe)`` follows the planning rule (docs/memory.md): the observed frames before the
last ``num_hist`` are written to the memory once each (window by window, with the action taken from each), the
last ``num_hist`` frames are the rollout's context, and ``WorldModel.rollout(memory=...)`` imagines the probe's
frames, reading the memory and never writing it. Every score of the suite is computed from these imagined latents
(``tests/evaluation/test_memory_eval_scores.py`` replaces the rollout with noise and with the truth).

``TruthImaginer`` returns the encoding of the true frames instead: the oracle that a perfect model would match.
"""

from __future__ import annotations

import numpy as np
import torch

from dinowm_core.data.windows import frames_to_tensor
from dinowm_core.evaluation.adapter import ModelAdapter
from dinowm_core.evaluation.memory.episodes import MemoryEpisode, Path


class ModelImaginer:
    """Imagined visual latents of a world model (frameskip 1: one model step per env step)."""

    def __init__(self, wm, *, device: str | torch.device = "cpu") -> None:
        if wm.cfg.frameskip != 1:
            raise ValueError(f"memory_eval needs a model with frameskip=1 (one model step per env step), "
                             f"got frameskip={wm.cfg.frameskip}")  # fmt: skip
        self.adapter = ModelAdapter(wm, device=device)
        self.wm = self.adapter.wm
        self.num_hist = wm.cfg.num_hist
        self.has_memory = self.wm.has_memory

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """frames (N, H, W, 3) uint8 -> visual latents (N, P, Dv)"""
        visual = frames_to_tensor(np.asarray(frames), self.adapter.img_size).to(self.adapter.device)
        return self.wm.encode_visual(visual[None])[0].float()

    def _obs(self, frames: np.ndarray, proprio: np.ndarray) -> dict[str, torch.Tensor]:
        """frames (B, T, H, W, 3), proprio (B, T, 3) -> model obs (B, T, ...)"""
        b, t = frames.shape[:2]
        obs = self.adapter.obs_to_model({"visual": frames.reshape(b * t, *frames.shape[2:]),
                                         "proprio": proprio.reshape(b * t, -1)})  # fmt: skip
        return {k: v[:, 0].reshape(b, t, *v.shape[2:]) for k, v in obs.items()}

    def _actions(self, actions: np.ndarray) -> torch.Tensor:
        """indices (B, T) -> model actions (B, T, A)"""
        a = np.asarray(actions, np.int64)
        return self.adapter.to_model_actions(a.reshape(a.shape[0], a.shape[1], 1))

    @torch.inference_mode()
    def read(self, frames: np.ndarray, proprio: np.ndarray, actions: np.ndarray, *,
             keep: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """The memory after writing ``frames[:, : -keep]`` (B, n, H, W, 3) with the actions taken from them
        (``actions`` (B, n - 1)), one window of up to ``num_hist`` frames at a time, each frame written once.
        ``keep`` (default ``num_hist``): the last frames left out, the context of what follows (a planner that
        is passed the current frame alone keeps 1 and writes each later frame itself)."""
        h, (b, n) = self.num_hist, frames.shape[:2]
        keep = h if keep is None else keep
        if not 1 <= keep <= h:
            raise ValueError(f"keep must be in 1..num_hist={h}, got {keep}")
        memory = self.wm.init_memory(b, device=self.adapter.device)
        if not self.has_memory or n <= keep:
            return memory
        z = self.wm.encode(
            self._obs(frames[:, : n - 1], proprio[:, : n - 1]), self._actions(actions[:, : n - 1])
        )
        for s in range(0, n - keep, h):
            _, memory = self.wm.predict_memory(z[:, s : s + h], memory, commit=min(h, n - keep - s))
        return memory

    @torch.inference_mode()
    def rollout(self, frames: np.ndarray, proprio: np.ndarray, context_actions: np.ndarray,
                path_actions: np.ndarray, memory: dict[str, torch.Tensor] | None) -> torch.Tensor:  # fmt: skip
        """Context frames (B, h, ...) with the actions taken from all but the last (B, h - 1), then the
        path's actions (B, m) -> imagined visual latents (B, m, P, Dv) of the frames after each path action."""
        h = frames.shape[1]
        act = self._actions(np.concatenate([context_actions, path_actions], axis=1))
        z_obs, _ = self.wm.rollout(self._obs(frames, proprio), act, memory=memory if memory else None)
        return z_obs["visual"][:, h:].float()

    def imagine_batch(self, eps: list[MemoryEpisode], key: str, *, use_memory: bool = True) -> torch.Tensor:
        """Episodes with equally many observed frames and equally long probes ``key`` -> imagined visual latents
        (B, m, P, Dv) along the probes from the end of the observed frames."""
        n = len(eps[0].frames)
        h = min(self.num_hist, n)
        frames, proprio = np.stack([e.frames for e in eps]), np.stack([e.proprio for e in eps])
        actions = np.stack([e.actions for e in eps]).reshape(len(eps), n - 1)
        path = np.stack([e.probes[key].actions for e in eps])
        memory = self.read(frames, proprio, actions) if use_memory else None
        return self.rollout(frames[:, -h:], proprio[:, -h:], actions[:, n - h :], path, memory)

    def imagine(self, ep: MemoryEpisode, probe: Path, *, use_memory: bool = True) -> torch.Tensor:
        """-> imagined visual latents (m, P, Dv) along ``probe`` from the end of ``ep``'s observed frames."""
        key = next(k for k, v in ep.probes.items() if v is probe)
        return self.imagine_batch([ep], key, use_memory=use_memory)[0]

    def imagine_first_visit(self, ep: MemoryEpisode) -> torch.Tensor:
        """Imagined latents of the observed frames after the first ``num_hist`` (the walk out, seen for the first
        time: the memory is empty there) -> (n - num_hist, P, Dv)."""
        h = self.num_hist
        return self.rollout(ep.frames[None, :h], ep.proprio[None, :h], ep.actions[None, : h - 1],
                            ep.actions[None, h - 1 :], None)[0]  # fmt: skip

    def decode(self, latents: torch.Tensor) -> np.ndarray | None:
        """Imagined visual latents (m, P, Dv) -> frames (m, H, W, 3) uint8, or None without a decoder."""
        if self.wm.decoder is None:
            return None
        from dinowm_core.training.artifacts import to_uint8

        with torch.inference_mode():
            images, _ = self.wm.decode_visual(latents[None].to(self.adapter.device))
        return to_uint8(images)[0]


class TruthImaginer(ModelImaginer):
    """The oracle: "imagines" the true frames (their encodings), so every score is perfect."""

    def imagine_batch(self, eps: list[MemoryEpisode], key: str, *, use_memory: bool = True) -> torch.Tensor:
        return torch.stack([self.encode(e.probes[key].frames) for e in eps])

    def imagine_first_visit(self, ep: MemoryEpisode) -> torch.Tensor:
        return self.encode(ep.frames[self.num_hist :])

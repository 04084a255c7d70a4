"""The env <-> model adapter of a planning evaluation (reference sections 5.1, 5.7).

:class:`ModelAdapter` is the one place that maps env data to model tensors and back, exactly as training does:
frames uint8 HWC -> [-1, 1] at ``img_size``; proprio and actions normalized with the checkpoint's dataset
statistics; model actions ``(f d)`` split into ``f`` env steps and denormalized. It also imagines executed
actions with the model (the evaluation's embedding divergence and decoded videos).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from einops import rearrange

from dinowm_core.data.normalization import Normalizer
from dinowm_core.data.windows import frames_to_tensor
from dinowm_core.models.world_model import WorldModel
from dinowm_core.training.artifacts import to_uint8

log = logging.getLogger(__name__)

Obs = dict[str, np.ndarray]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelAdapter:
    """Env data <-> world-model tensors, plus the model's imagination of executed actions."""

    def __init__(self, wm: WorldModel, *, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.wm = wm.to(self.device).eval()
        cfg = wm.cfg
        self.img_size, self.frameskip, self.env_action_dim = cfg.img_size, cfg.frameskip, cfg.env.action_dim
        if wm.normalization is None:
            log.warning("checkpoint has no normalization statistics: using identity normalization")
            # stores hold env units (the importer converts PushT's pixel actions), so no action scale here
            self.normalizer = Normalizer.identity(
                cfg.env.action_dim, cfg.env.proprio_dim, num_actions=cfg.env.num_actions
            )
        else:
            self.normalizer = Normalizer.from_dict(wm.normalization)

    def obs_to_model(self, obs: Obs) -> dict[str, torch.Tensor]:
        """visual uint8 (B, H, W, 3), proprio (B, Dp) -> {"visual": (B, 1, 3, S, S), "proprio": (B, 1, Dp)}"""
        visual = frames_to_tensor(np.asarray(obs["visual"]), self.img_size)
        proprio = torch.as_tensor(self.normalizer.normalize_proprio(np.asarray(obs["proprio"], np.float64)))
        return {
            "visual": visual[:, None].to(self.device),
            "proprio": proprio[:, None].float().to(self.device),
        }

    @torch.inference_mode()
    def encode(self, obs: Obs) -> dict[str, torch.Tensor]:
        """-> z_obs {"visual": (B, 1, P, Dv), "proprio": (B, 1, Dp_emb)}"""
        return self.wm.encode_obs(self.obs_to_model(obs))

    def to_env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """normalized (B, T, f*d) -> env units (B, T*f, d)"""
        per_step = rearrange(actions.detach().float().cpu(), "b t (f d) -> b (t f) d", f=self.frameskip)
        return np.asarray(self.normalizer.denormalize_actions(per_step.numpy().astype(np.float64)))

    def to_model_actions(self, actions: np.ndarray) -> torch.Tensor:
        """env units (B, T*f, d) -> normalized (B, T, f*d)"""
        norm = torch.as_tensor(self.normalizer.normalize_actions(np.asarray(actions, np.float64))).float()
        return rearrange(norm, "b (t f) d -> b t (f d)", f=self.frameskip).to(self.device)

    @torch.inference_mode()
    def imagine(
        self, obs0: Obs, actions: np.ndarray, real_final: Obs, decode: bool = False
    ) -> dict[str, Any]:
        """Open-loop imagination of executed env actions (B, T_env, d), T_env a multiple of frameskip >= f.

        Returns per-episode embedding divergence between the imagined final frame and the real frame
        ``real_final`` (MSE over the visual tokens and over the proprio embedding; the reference reports a
        norm over all instances together) and, if ``decode``, the decoded imagined frames uint8
        (B, T_env/f + 1, H, W, 3).
        """
        z_pred, _ = self.wm.rollout(self.obs_to_model(obs0), self.to_model_actions(actions))
        z_real = self.encode(real_final)
        out: dict[str, Any] = {
            "div_visual_emb": _mse(z_pred["visual"][:, -1], z_real["visual"][:, 0]),
            "div_proprio_emb": _mse(z_pred["proprio"][:, -1], z_real["proprio"][:, 0]),
        }
        if decode and self.wm.decoder is not None:
            images, _ = self.wm.decode_visual(z_pred["visual"])
            out["frames"] = to_uint8(images)
        return out


def _mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (a.float() - b.float()).square().flatten(1).mean(1).cpu().numpy()

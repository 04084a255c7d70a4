"""The model side of a planning evaluation: observations in, env actions out (reference sections 5.1, 5.7).

A *policy* has two verbs, shaped so that it can sit in the driver, in a Ray actor or behind a Serve
deployment:

* ``reset(episode_seeds, seed)`` before a batch of episodes (clears MPC warm starts, seeds the sampler);
* ``plan(obs, goal) -> (B, n, d)`` env-unit actions for the next ``n`` env steps of every episode, from a
  batch of raw observations ``{"visual": uint8 (B, H, W, 3), "proprio": (B, Dp)}`` and goal observations.

:class:`ModelPolicy` plans through a world model (MPC: ``closed_loop``; open-loop CEM/GD: one plan, executed
whole); :class:`RandomPolicy` is the baseline (uniform actions in the env's action box, per-episode RNG).
:class:`ModelAdapter` is the one place that maps env data to model tensors and back, exactly as training
does: frames uint8 HWC -> [-1, 1] at ``img_size``; proprio and actions normalized with the checkpoint's
dataset statistics; model actions ``(f d)`` split into ``f`` env steps and denormalized.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import torch
from einops import rearrange

from dinowm_core.data.normalization import Normalizer
from dinowm_core.data.windows import frames_to_tensor
from dinowm_core.models.world_model import WorldModel
from dinowm_core.planning.common import normalized_zero_action
from dinowm_core.planning.planner import Planner, PlanState, make_planner

log = logging.getLogger(__name__)

Obs = dict[str, np.ndarray]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Policy(Protocol):
    #: False = one plan per episode (open loop): the evaluation stops asking after the first call
    closed_loop: bool

    def reset(self, episode_seeds: list[int], seed: int) -> None: ...

    def plan(self, obs: Obs, goal: Obs) -> np.ndarray: ...


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
            self.normalizer = Normalizer.identity(cfg.env.action_dim, cfg.env.proprio_dim)
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


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)"""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


class ModelPolicy:
    """Plans with a world model through a :class:`~dinowm_core.planning.planner.Planner`, holding its state
    between calls; ``closed_loop`` is the planner's (MPC replans, an open-loop plan is executed whole)."""

    def __init__(self, adapter: ModelAdapter, planner: Planner) -> None:
        self.adapter, self.planner, self.closed_loop = adapter, planner, planner.closed_loop
        self.state: PlanState | None = None

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        """One RNG stream per episode, seeded by (seed, episode seed): a plan does not depend on which other
        episodes share the batch."""
        seeds = [_mix(seed, s) for s in episode_seeds]
        self.state = self.planner.init_state(len(seeds), seeds, device=self.adapter.device)

    def plan(self, obs: Obs, goal: Obs) -> np.ndarray:
        if self.state is None or self.state.batch_size != len(obs["visual"]):
            have = "no" if self.state is None else self.state.batch_size
            raise RuntimeError(f"reset() was given {have} episodes, plan() {len(obs['visual'])}")
        z_obs, z_goal = self.adapter.encode(obs), self.adapter.encode(goal)
        result, self.state = self.planner.plan(z_obs, z_goal, self.state)
        return self.adapter.to_env_actions(result.execute)


def _mix(seed: int, episode_seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(episode_seed)]).generate_state(1, np.uint64)[0] >> 1)


class RandomPolicy:
    """Uniform env-unit actions in ``[low, high]``, ``chunk`` env steps per call, one RNG per episode.

    Each episode's action stream depends only on its episode seed, whatever the batch or chunking.
    """

    closed_loop = True

    def __init__(self, low: np.ndarray, high: np.ndarray, chunk: int) -> None:
        self.low, self.high, self.chunk = (
            np.asarray(low, np.float64),
            np.asarray(high, np.float64),
            int(chunk),
        )
        if not np.all(np.isfinite(self.low) & np.isfinite(self.high)):
            raise ValueError("the random baseline needs a bounded action box")
        self.rngs: list[np.random.Generator] = []

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        self.rngs = [np.random.default_rng([int(s), 0x5EED]) for s in episode_seeds]

    def plan(self, obs: Obs, goal: Obs) -> np.ndarray:
        return np.stack([r.uniform(self.low, self.high, (self.chunk, len(self.low))) for r in self.rngs])


def build_policy(
    cfg: Any, *, adapter: ModelAdapter | None, action_box: tuple[np.ndarray, np.ndarray] | None = None
) -> Policy:
    """The evaluation's policy: ``eval.policy=random`` (needs ``action_box``) or ``cfg.planner`` via
    :func:`dinowm_core.planning.planner.make_planner` (no action bounds, as the reference)."""
    p = cfg.planner
    if cfg.eval.policy == "random":
        if action_box is None:
            raise ValueError("the random baseline needs the env's action box")
        n_taken = p.mpc.n_taken_actions if p.name.startswith("mpc_") else p.horizon
        return RandomPolicy(*action_box, chunk=cfg.frameskip * n_taken)
    if adapter is None:
        raise ValueError(f"planner {p.name} needs a world model")
    zero = normalized_zero_action(adapter.normalizer, cfg.env.action_dim, cfg.frameskip).to(adapter.device)
    return ModelPolicy(adapter, make_planner(p, adapter.wm, zero_action=zero))

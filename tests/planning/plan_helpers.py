"""Shared test helpers: an analytic 'world model' and TINY world models."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from dinowm_core import build_world_model, load_config
from tests.conftest import TINY


class IntegratorWM:
    """Analytic world model: state s (A,), s_{t+1} = s_t + a_t; latent visual = s as one patch, proprio = s.

    With ``mode="last"`` the objective is ``(1 + alpha) * mean((s0 + sum_t a_t - g)^2)``: quadratic, minimum 0.
    """

    def __init__(self, action_dim: int = 4) -> None:
        self.action_encoder = SimpleNamespace(in_dim=action_dim)
        self.calls = 0

    def rollout(self, obs0, act, *, z_obs0):
        self.calls += 1
        s0 = z_obs0["proprio"][:, -1:]  # (B, 1, A)
        s = torch.cat([s0, s0 + act.cumsum(dim=1)], dim=1)  # (B, H+1, A)
        return {"visual": s[:, :, None], "proprio": s}, s[:, :, None]


def latents(s: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, A) state -> integrator latents with one frame."""
    return {"visual": s[:, None, None].clone(), "proprio": s[:, None].clone()}


def tiny_wm(*overrides: str):
    torch.manual_seed(0)
    cfg = load_config([*TINY, "predictor.dropout=0.0", *overrides])
    return build_world_model(cfg).eval()


def tiny_obs(cfg, b: int, t: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "visual": torch.rand(b, t, 3, cfg.img_size, cfg.img_size, generator=g) * 2 - 1,
        "proprio": torch.randn(b, t, cfg.env.proprio_dim, generator=g),
    }


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def cem_cfg(horizon: int, name: str = "cem", n_taken: int = 1, **fields):
    """A planner config for CEM (``name`` cem / mpc_cem; MPC executes ``n_taken``) with CEM ``fields``."""
    from dinowm_core.config import CEMConfig, MPCConfig, PlannerConfig

    mpc = MPCConfig(n_taken_actions=n_taken)
    return PlannerConfig(name=name, horizon=horizon, cem=CEMConfig(**fields), mpc=mpc)


def gd_cfg(horizon: int, name: str = "gd", n_taken: int = 1, **fields):
    """A planner config for GD (``name`` gd / mpc_gd; MPC executes ``n_taken``) with GD ``fields``."""
    from dinowm_core.config import GDConfig, MPCConfig, PlannerConfig

    mpc = MPCConfig(n_taken_actions=n_taken)
    return PlannerConfig(name=name, horizon=horizon, gd=GDConfig(**fields), mpc=mpc)


def plan_once(wm, z0, zg, cfg, seeds=None, *, init=None, bounds=None, zero_action=None):
    """One call of the planner ``cfg`` names: per-episode RNG streams seeded ``seeds``, optional warm start."""
    from dataclasses import replace

    from dinowm_core.planning import make_planner

    planner = make_planner(cfg, wm, bounds=bounds, zero_action=zero_action)
    b = z0["visual"].shape[0]
    state = planner.init_state(b, seeds if seeds is not None else list(range(b)))
    if init is not None:
        state = replace(state, warm_start=init)
    result, _ = planner.plan(z0, zg, state)
    return result

"""Where a Wall world model is wrong, and what that does to planning: one line per checkpoint.

    python bench/wall_model_errors.py --data outputs/quickstart/data CKPT [CKPT ...]

* **one model step** (frameskip env steps) from recorded states of ``--data``: the error of the predicted
  position against the true one, separately for steps a wall cut short (the true end is >= 2 px from where free
  motion would have put the dot) and free steps. The position is read from the predicted proprio embedding
  (the embedder is linear: least squares through its weights).
* **closed loop**: MPC-CEM with the quickstart's planner (``ray_jobs.quickstart.PLAN``: 100 samples, top 10, 5
  iterations, replan every 25 env steps, budget 50, horizon 10 with plans that end with the budget; the
  horizon-5 rows of docs/quickstart_results.md are ``--planner planner.horizon=5 planner.end_at_budget=false``)
  on the 20 random-state episodes of each eval seed, stepping the batched Wall simulator in-process, each episode's planner random numbers seeded as the evaluation seeds them (so, like
  the service's env actors, it should plan what ``dinowm quickstart`` plans). With ``--per-plan`` it prints, per episode and plan, where the model expected the plan to
  end and where it really ended: a model that walks through walls shows here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dinowm_core import load_world_model  # noqa: E402
from dinowm_core.data.store import TrajectoryStore  # noqa: E402
from dinowm_core.envs.base import make_env  # noqa: E402
from dinowm_core.envs.wall import STEP_SCALE, SUCCESS_RADIUS  # noqa: E402
from dinowm_core.envs.wall_batch import step_batch  # noqa: E402
from dinowm_core.evaluation import wilson_interval  # noqa: E402
from dinowm_core.evaluation.adapter import ModelAdapter  # noqa: E402
from dinowm_core.evaluation.policy import _mix as episode_stream_seed  # noqa: E402
from dinowm_core.planning import budget_horizon, make_planner  # noqa: E402
from dinowm_core.presets import plan_config  # noqa: E402
from ray_jobs.quickstart import PLAN  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from planners import targets  # noqa: E402

PLANNER = [*PLAN, "eval.n_evals=20", "eval.n_plot_samples=0", "eval.device=cpu"]


def position_reader(wm, adapter: ModelAdapter):
    """Predicted proprio embeddings (N, E) -> positions (N, 2) in env units."""
    w = wm.proprio_encoder.proj.weight.detach().double().numpy()
    b = wm.proprio_encoder.proj.bias.detach().double().numpy()

    def read(emb: torch.Tensor) -> np.ndarray:
        normalized = np.linalg.lstsq(w, (emb.double().numpy() - b).T, rcond=None)[0].T
        return np.asarray(adapter.normalizer.denormalize_proprio(normalized))

    return read


def step_errors(wm, adapter: ModelAdapter, store: TrajectoryStore, max_blocked: int = 60) -> dict[str, float]:
    """Mean position error (px) of one predicted model step, for wall-blocked and for free steps."""
    read, f = position_reader(wm, adapter), wm.cfg.frameskip
    errors: dict[str, list[float]] = {"blocked": [], "free": []}
    for i in range(0, store.num_episodes, 3):
        states, actions = store.states(i)[:, :2], store.actions(i).astype(np.float64)
        for t in range(0, len(states) - f - 1, f):
            z0 = adapter.encode(
                {"visual": store.frames(i, np.array([t])), "proprio": store.proprio(i, t, t + 1)}
            )
            with torch.inference_mode():
                z, _ = wm.rollout(None, adapter.to_model_actions(actions[None, t : t + f]), z_obs0=z0)
            predicted = read(z["proprio"][0, -1:])[0]
            free = states[t] + STEP_SCALE * actions[t : t + f].sum(0)  # Wall: pos += 2 * action
            kind = "blocked" if np.linalg.norm(states[t + f] - free) > 2.0 else "free"
            errors[kind].append(float(np.linalg.norm(predicted - states[t + f])))
        if len(errors["blocked"]) >= max_blocked:
            break
    return {f"{k}_err_px": float(np.mean(v)) for k, v in errors.items()} | {
        f"n_{k}": len(v) for k, v in errors.items()
    }


def closed_loop(
    wm, adapter: ModelAdapter, per_plan: bool, seed: int = 0, planner_overrides=()
) -> dict[str, float]:
    cfg = plan_config(wm.cfg, [*PLANNER, *planner_overrides])
    tgts = targets(cfg, [seed])[seed]
    env = make_env("wall", img_size=cfg.img_size, **cfg.env.kwargs)
    read = position_reader(wm, adapter)
    planner = make_planner(cfg.planner, wm)
    # each episode's planner RNG stream seeded as the evaluation (and the service's env actors) seed it
    state = planner.init_state(len(tgts), [episode_stream_seed(seed, t.episode_seed) for t in tgts])
    pos = np.array([t.init_state for t in tgts], np.float64)
    goal = np.array([t.goal_state for t in tgts], np.float64)
    layout = np.array([[t.env_params.get("wall_x", 32), t.env_params.get("door_y", 30)] for t in tgts], float)

    def observe(points: np.ndarray) -> dict[str, np.ndarray]:
        pairs = zip(tgts, points, strict=True)
        obs = [env.reset(options={"state": p, "env_params": t.env_params})[0] for t, p in pairs]
        return {k: np.stack([o[k] for o in obs]) for k in ("visual", "proprio")}

    z_goal = adapter.encode({k: np.stack([t.goal_obs[k] for t in tgts]) for k in ("visual", "proprio")})
    steps, plans = 0, [[] for _ in tgts]
    while steps < cfg.eval.budget:
        z0 = adapter.encode(observe(pos))
        left = cfg.eval.budget - steps
        horizon = (
            budget_horizon(cfg.planner.horizon, cfg.frameskip, left) if cfg.planner.end_at_budget else None
        )
        result, state = planner.plan(z0, z_goal, state, horizon=horizon)
        with torch.inference_mode():
            z, _ = wm.rollout(None, result.execute, z_obs0=z0)
        expected = read(z["proprio"][:, -1])
        for a in adapter.to_env_actions(result.execute).transpose(1, 0, 2)[: cfg.eval.budget - steps]:
            pos, steps = step_batch(pos, a, layout[:, 0], layout[:, 1]), steps + 1
        for i in range(len(tgts)):
            plans[i].append((expected[i].round(1).tolist(), pos[i].round(1).tolist()))
    dist = np.linalg.norm(pos - goal, axis=1)
    if per_plan:
        for i, t in enumerate(tgts):
            mark = "S" if dist[i] < SUCCESS_RADIUS else "."
            print(f"  {i:2d} {mark} start {t.init_state.round(1).tolist()} goal {t.goal_state.round(1).tolist()} "
                  f"plans (model's end -> true end): {plans[i]}")  # fmt: skip
    return {"successes": int((dist < SUCCESS_RADIUS).sum()), "n": len(tgts), "distances": dist.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", required=True, help="a Wall dataset for the one-step errors")
    ap.add_argument("--per-plan", action="store_true", help="print each plan's expected and true end")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds (20 episodes each)")
    ap.add_argument(
        "--planner",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="planner overrides on top of the quickstart's, e.g. planner.cem.var_scale=2",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    store = TrajectoryStore(args.data)
    print("checkpoint | blocked-step error | free-step error | closed-loop success | mean final distance")
    for ckpt in args.checkpoints:
        wm = load_world_model(ckpt).eval()
        adapter = ModelAdapter(wm, device="cpu")
        errs = step_errors(wm, adapter, store)
        loops = [closed_loop(wm, adapter, args.per_plan, s, args.planner) for s in args.seeds]
        k, n = sum(lp["successes"] for lp in loops), sum(lp["n"] for lp in loops)
        lo, hi = wilson_interval(k, n)
        dist = float(np.mean([d for lp in loops for d in lp["distances"]]))
        print(f"{ckpt} | {errs['blocked_err_px']:.2f} px (n={errs['n_blocked']}) | {errs['free_err_px']:.2f} px "
              f"(n={errs['n_free']}) | {k / n:.2f} ({lo:.2f}-{hi:.2f}, n={n}) | {dist:.1f} px", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

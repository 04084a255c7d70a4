"""Planner benchmark on Wall: CEM, iCEM, MPPI and GD at several rollout budgets, same episodes and seeds for all.

    python bench/planners.py --ckpt outputs/quickstart/.../checkpoint --parts a b c --out bench/results/cpu

Parts (one JSON row per planner setting, written to ``<out>/planners_<part>.json``; plots ``planners_wall.png``):

* **a** objective reached vs rollouts per plan: open-loop plans (horizon 5) for the first ``--problems``
  random-state episodes, encoded by the model, for ``--plan-seeds`` planner seeds each;
* **b** success at a fixed env-step budget vs rollouts per plan: the project's evaluation (``evaluate``: MPC,
  H 5, 5 model steps executed per plan, budget 50 env steps, no simulator early stop), 95% Wilson intervals;
* **c** the same MPC episodes with the **true simulator as the model** (batched Wall step, latents = the dot's
  position and the layout), which separates a planner's search power from the learned model's error. GD is
  absent here: the simulator's collision step is not differentiable.

"Rollouts per plan" counts model rollouts of one episode's plan (GD: forward passes; each also pays a
backward). "Seconds per plan" is the planner's wall time per episode, with all episodes planned in one batch
on the CPU threads given (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dinowm_core import apply_overrides, load_world_model  # noqa: E402
from dinowm_core.envs.base import make_env  # noqa: E402
from dinowm_core.envs.wall import SUCCESS_RADIUS  # noqa: E402
from dinowm_core.envs.wall_batch import step_batch  # noqa: E402
from dinowm_core.evaluation import wilson_interval  # noqa: E402
from dinowm_core.evaluation.adapter import ModelAdapter  # noqa: E402
from dinowm_core.evaluation.loop import evaluate, layout_dataset, targets_for_seed  # noqa: E402
from dinowm_core.evaluation.policy import build_policy  # noqa: E402
from dinowm_core.planning import budget_horizon, make_planner  # noqa: E402
from dinowm_core.presets import plan_config  # noqa: E402

log = logging.getLogger("bench.planners")

# label -> planner overrides (the name gets "mpc_" in parts b and c). CEM 300 x 30 is the reference default.
LADDER = {
    "cem 300x30": ["planner.name=cem", "planner.cem.num_samples=300", "planner.cem.topk=30", "planner.cem.opt_steps=30"],
    "cem 300x10": ["planner.name=cem", "planner.cem.num_samples=300", "planner.cem.topk=30", "planner.cem.opt_steps=10"],
    "cem 100x5": ["planner.name=cem", "planner.cem.num_samples=100", "planner.cem.topk=10", "planner.cem.opt_steps=5"],
    "cem 30x3": ["planner.name=cem", "planner.cem.num_samples=30", "planner.cem.topk=5", "planner.cem.opt_steps=3"],
    "icem 300/10x3": ["planner.name=icem", "planner.icem.num_samples=300", "planner.icem.topk=10",
                      "planner.icem.opt_steps=3"],
    "icem 100/10x3": ["planner.name=icem", "planner.icem.num_samples=100", "planner.icem.topk=10",
                      "planner.icem.opt_steps=3"],
    "icem 50/5x3": ["planner.name=icem", "planner.icem.num_samples=50", "planner.icem.topk=5",
                    "planner.icem.opt_steps=3"],
    "icem 30/5x2": ["planner.name=icem", "planner.icem.num_samples=30", "planner.icem.topk=5",
                    "planner.icem.opt_steps=2"],
    "mppi 300x6": ["planner.name=mppi", "planner.mppi.num_samples=300", "planner.mppi.opt_steps=6"],
    "mppi 100x3": ["planner.name=mppi", "planner.mppi.num_samples=100", "planner.mppi.opt_steps=3"],
    "mppi 50x3": ["planner.name=mppi", "planner.mppi.num_samples=50", "planner.mppi.opt_steps=3"],
    "gd 100": ["planner.name=gd", "planner.gd.opt_steps=100"],
    "gd 30": ["planner.name=gd", "planner.gd.opt_steps=30"],
    # part a: one plan gives a whole curve of objective vs rollouts, so a few long runs suffice
    "icem 300/10x8": ["planner.name=icem", "planner.icem.num_samples=300", "planner.icem.topk=10",
                      "planner.icem.opt_steps=8"],
    "mppi 300x10": ["planner.name=mppi", "planner.mppi.num_samples=300", "planner.mppi.opt_steps=10"],
    "gd 300": ["planner.name=gd", "planner.gd.opt_steps=300"],
    # wider initial std (2 x the data's action std): with the simulator iCEM 300/10x3 goes from 0.73 to 0.95
    "icem 300/10x3 s2": ["planner.name=icem", "planner.icem.num_samples=300", "planner.icem.topk=10",
                         "planner.icem.opt_steps=3", "planner.icem.var_scale=2.0"],
    "icem 100/10x3 s2": ["planner.name=icem", "planner.icem.num_samples=100", "planner.icem.topk=10",
                         "planner.icem.opt_steps=3", "planner.icem.var_scale=2.0"],
    "icem 300/10x5": ["planner.name=icem", "planner.icem.num_samples=300", "planner.icem.topk=10",
                      "planner.icem.opt_steps=5"],
    "icem 300/10x3 b0": ["planner.name=icem", "planner.icem.num_samples=300", "planner.icem.topk=10",
                         "planner.icem.opt_steps=3", "planner.icem.beta=0"],
    # the final mean instead of the best sample (a learned model's best sample may exploit its errors)
    "icem 300/10x3 mean": ["planner.name=icem", "planner.icem.num_samples=300", "planner.icem.topk=10",
                           "planner.icem.opt_steps=3", "planner.icem.execute=mean"],
    # temperature 0.003: on 8 model problems 100x6 reaches 0.031 at 0.003, 0.038 at 0.01 (100x3: 0.074 / 0.083)
    "mppi 100x6": ["planner.name=mppi", "planner.mppi.num_samples=100", "planner.mppi.opt_steps=6",
                   "planner.mppi.temperature=0.003"],
}  # fmt: skip
PART_A = ["cem 300x30", "icem 300/10x8", "mppi 300x10", "gd 30"]
PART_B = ["cem 300x10", "cem 100x5", "cem 30x3", "icem 300/10x3", "icem 100/10x3", "icem 50/5x3", "icem 30/5x2",
          "mppi 100x3", "mppi 50x3", "gd 30"]  # fmt: skip


def emit(rows: list[dict], **row) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def family(label: str) -> str:
    return label.split()[0]


def with_planner(cfg, label: str, mpc: bool, extra: list[str]):
    items = list(LADDER[label])
    if mpc:
        items[0] = items[0].replace("=", "=mpc_")
    return apply_overrides(cfg, [*items, *extra])


# ---- the true simulator as a world model -----------------------------------------------------------------


class WallSim:
    """The Wall dynamics behind the planner's world-model interface (``rollout(None, act, z_obs0=...)``).

    Latents: visual (B, n, 1, 4) = [x, y, wall_x, door_y] / 64 (the layout rides along so every candidate row
    knows its episode's walls), proprio (B, n, 2) = the normalized position. Actions are the model's normalized
    frameskip-concatenated actions, denormalized with the checkpoint's statistics.
    """

    def __init__(self, normalizer, frameskip: int, action_dim: int = 2) -> None:
        self.normalizer, self.f, self.d = normalizer, frameskip, action_dim
        self.action_encoder = SimpleNamespace(in_dim=frameskip * action_dim)
        self.num_hist = 1

    def latents(self, pos: np.ndarray, layout: np.ndarray) -> dict[str, torch.Tensor]:
        """pos (B, T, 2), layout (B, 2) -> latents with T frames."""
        lay = np.broadcast_to(layout[:, None], pos.shape)
        visual = torch.as_tensor(np.concatenate([pos, lay], -1) / 64.0).float()[:, :, None]
        proprio = torch.as_tensor(self.normalizer.normalize_proprio(pos)).float()
        return {"visual": visual, "proprio": proprio}

    def env_actions(self, act: torch.Tensor) -> np.ndarray:
        """(M, H, f*d) normalized -> (M, H*f, d) env units"""
        per_step = act.reshape(act.shape[0], -1, self.d).double().numpy()
        return np.asarray(self.normalizer.denormalize_actions(per_step))

    def rollout(self, obs0, act: torch.Tensor, *, z_obs0):
        layout = z_obs0["visual"][:, -1, 0, 2:].double().numpy() * 64.0  # (M, 2)
        pos = z_obs0["visual"][:, -1, 0, :2].double().numpy() * 64.0
        steps, frames = self.env_actions(act), [pos]
        for t in range(steps.shape[1]):
            pos = step_batch(pos, steps[:, t], layout[:, 0], layout[:, 1])
            if (t + 1) % self.f == 0:
                frames.append(pos)
        z = self.latents(np.stack(frames, 1), layout)
        return z, z["visual"]


def sim_episodes(cfg, wm_sim: WallSim, targets, label: str) -> dict:
    """MPC episodes of ``cfg.planner`` with the simulator as the model; success after ``eval.budget`` steps
    (each plan ending with the budget under ``planner.end_at_budget``, as the evaluation plans)."""
    planner = make_planner(cfg.planner, wm_sim)
    pos = np.array([t.init_state for t in targets], np.float64)
    goal = np.array([t.goal_state for t in targets], np.float64)
    layout = np.array(
        [[t.env_params.get("wall_x", 32), t.env_params.get("door_y", 30)] for t in targets], float
    )
    z_goal = wm_sim.latents(goal[:, None], layout)
    state = planner.init_state(len(targets), [t.episode_seed % 2**62 for t in targets])
    steps, plan_s, rollouts, calls = 0, 0.0, 0, 0
    while steps < cfg.eval.budget:
        t0 = time.perf_counter()
        left = cfg.eval.budget - steps
        horizon = (
            budget_horizon(cfg.planner.horizon, cfg.frameskip, left) if cfg.planner.end_at_budget else None
        )
        result, state = planner.plan(wm_sim.latents(pos[:, None], layout), z_goal, state, horizon=horizon)
        plan_s, rollouts, calls = (
            plan_s + time.perf_counter() - t0,
            rollouts + result.info["n_rollouts"],
            calls + 1,
        )
        for a in wm_sim.env_actions(result.execute).transpose(1, 0, 2)[: cfg.eval.budget - steps]:
            pos, steps = step_batch(pos, a, layout[:, 0], layout[:, 1]), steps + 1
    success = np.linalg.norm(pos - goal, axis=1) < SUCCESS_RADIUS
    return {"successes": int(success.sum()), "n": len(targets), "plan_calls": calls,
            "rollouts_per_plan": rollouts / (calls * len(targets)), "s_per_plan": plan_s / (calls * len(targets)),
            "mean_distance": float(np.linalg.norm(pos - goal, axis=1).mean())}  # fmt: skip


# ---- the parts ---------------------------------------------------------------------------------------------


def targets(cfg, seeds: list[int]):
    env = make_env("wall", img_size=cfg.img_size, **cfg.env.kwargs)
    data = layout_dataset(cfg)
    return {s: targets_for_seed(cfg, env, s, data, None) for s in seeds}


def encode_targets(cfg, adapter: ModelAdapter, tgts) -> tuple[dict, dict]:
    env = make_env("wall", img_size=cfg.img_size, **cfg.env.kwargs)
    obs = []
    for t in tgts:
        o, _ = env.reset(options={"state": t.init_state, "env_params": t.env_params})
        obs.append(o)
    stack = lambda xs, k: np.stack([x[k] for x in xs])  # noqa: E731
    z0 = adapter.encode({"visual": stack(obs, "visual"), "proprio": stack(obs, "proprio")})
    zg = adapter.encode({"visual": stack([t.goal_obs for t in tgts], "visual"),
                         "proprio": stack([t.goal_obs for t in tgts], "proprio")})  # fmt: skip
    return z0, zg


def _curve(result, family_name: str, b: int) -> tuple[list[float], list[float]]:
    """Objective reached vs rollouts spent per episode, iteration by iteration (one plan gives a whole curve):
    the best sampled loss (CEM, MPPI), the best so far (iCEM), the current loss (GD)."""
    info = result.info
    losses = info["loss"] if family_name == "gd" else info["best_loss"]  # (iterations, B)
    if family_name == "icem":
        spent = np.cumsum(info["population"]).tolist()
    else:
        per = info["n_rollouts"] // b // len(losses)
        spent = [per * (i + 1) for i in range(len(losses))]
    return [float(x) for x in spent], losses.float().mean(dim=1).tolist()


def part_a(cfg, wm, labels, args, rows) -> None:
    adapter = ModelAdapter(wm, device="cpu")
    tgts = targets(cfg, [args.seeds[0]])[args.seeds[0]][: args.problems]
    z0, zg = encode_targets(cfg, adapter, tgts)
    for label in labels:
        pcfg = with_planner(cfg, label, False, [])
        curves, secs = [], []
        for seed in range(args.plan_seeds):
            planner = make_planner(pcfg.planner, wm)
            state = planner.init_state(len(tgts), [1000 * seed + i for i in range(len(tgts))])
            t0 = time.perf_counter()
            result, _ = planner.plan(z0, zg, state)
            secs.append((time.perf_counter() - t0) / len(tgts))
            curves.append(_curve(result, family(label), len(tgts)))
        spent = curves[0][0]
        obj = np.array([c[1] for c in curves])  # (seeds, iterations)
        emit(rows, part="a", planner=label, family=family(label), rollouts=spent, objective=obj.mean(0).tolist(),
             objective_sd=obj.std(0).tolist(), rollouts_per_plan=spent[-1], final_objective=float(obj[:, -1].mean()),
             s_per_plan=float(np.mean(secs)), problems=len(tgts), plan_seeds=args.plan_seeds)  # fmt: skip


class TimedPlanner:
    """A planner that adds up its plan() seconds and rollouts (everything else is forwarded)."""

    def __init__(self, planner) -> None:
        self.planner, self.s, self.calls, self.rollouts, self.episodes = planner, 0.0, 0, 0, 0

    def __getattr__(self, name):
        return getattr(self.planner, name)

    def plan(self, z_obs, z_goal, state=None):
        t0 = time.perf_counter()
        result, state = self.planner.plan(z_obs, z_goal, state)
        self.s += time.perf_counter() - t0
        self.calls, self.rollouts = self.calls + 1, self.rollouts + result.info["n_rollouts"]
        self.episodes += z_obs["visual"].shape[0]
        return result, state


def _success_row(part: str, label: str, k: int, n: int, **extra) -> dict:
    lo, hi = wilson_interval(k, n)
    return dict(part=part, planner=label, family=family(label), success_rate=k / n, success_ci95=[lo, hi],
                successes=k, n=n, **extra)  # fmt: skip


def part_b(cfg, wm, labels, args, rows) -> None:
    adapter = ModelAdapter(wm, device="cpu")
    for label in labels:
        pcfg = with_planner(cfg, label, True, [f"eval.seeds={json.dumps(args.seeds)}"])
        policy = build_policy(pcfg, adapter=adapter)
        timed = policy.planner = TimedPlanner(policy.planner)
        t0 = time.perf_counter()
        s = evaluate(wm, pcfg, policy=policy).summary()
        k = int(round(s["success_rate"] * s["n"]))
        emit(rows, **_success_row("b", label, k, s["n"], rollouts_per_plan=timed.rollouts / timed.episodes,
             s_per_plan=timed.s / timed.episodes, mean_distance=s["mean_distance"],
             eval_s=time.perf_counter() - t0))  # fmt: skip


def part_c(cfg, wm, labels, args, rows) -> None:
    sim = WallSim(ModelAdapter(wm, device="cpu").normalizer, cfg.frameskip)
    tg = targets(cfg, args.sim_seeds)
    for label in labels:
        if family(label) == "gd":
            continue
        own = any("temperature" in item for item in LADDER[label])
        pcfg = with_planner(
            cfg, label, True, [] if own else [f"planner.mppi.temperature={args.sim_temperature}"]
        )
        outs = [sim_episodes(pcfg, sim, tg[s], label) for s in args.sim_seeds]
        k, n = sum(o["successes"] for o in outs), sum(o["n"] for o in outs)
        emit(rows, **_success_row("c", label, k, n, rollouts_per_plan=outs[0]["rollouts_per_plan"],
             s_per_plan=float(np.mean([o["s_per_plan"] for o in outs])),
             mean_distance=float(np.mean([o["mean_distance"] for o in outs]))))  # fmt: skip


# ---- plot --------------------------------------------------------------------------------------------------

COLORS = {"cem": "tab:blue", "icem": "tab:orange", "mppi": "tab:green", "gd": "tab:red"}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("a", "objective", "objective of the plan (lower is better)"),
             ("b", "success_rate", "success at 50 env steps, learned model"),
             ("c", "success_rate", "success at 50 env steps, true simulator")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (part, key, title) in zip(axes, parts, strict=True):
        for r in (r for r in rows if part == "a" and r["part"] == "a"):
            ax.plot(r["rollouts"], r["objective"], "-", color=COLORS[r["family"]], label=r["planner"],
                    alpha=0.5 + 0.5 * ("300" in r["planner"]))  # fmt: skip
        for fam, color in COLORS.items():
            if part == "a":
                break
            pts = sorted(
                (r["rollouts_per_plan"], r[key], r) for r in rows if r["part"] == part and r["family"] == fam
            )
            if not pts:
                continue
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(x, y, "o", color=color, label=fam)  # variants differ in more than rollouts: no lines
            if key == "success_rate":
                lo = [p[1] - p[2]["success_ci95"][0] for p in pts]
                hi = [p[2]["success_ci95"][1] - p[1] for p in pts]
                ax.errorbar(x, y, yerr=[lo, hi], fmt="none", color=color, alpha=0.4, capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("rollouts per plan (per episode)")
        ax.set_title(f"({part}) {title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Wall planners: CEM vs iCEM vs MPPI vs GD (CPU, quickstart model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    ap.add_argument("--planners", nargs="+", default=None, help=f"labels of {list(LADDER)}; default per part")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cpu"))
    ap.add_argument("--n-evals", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds of parts a, b")
    ap.add_argument("--sim-seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds of part c")
    ap.add_argument("--problems", type=int, default=10, help="part a: planning problems")
    ap.add_argument("--plan-seeds", type=int, default=3, help="part a: planner seeds per problem")
    ap.add_argument("--sim-temperature", type=float, default=0.01, help="MPPI temperature with the simulator")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides (every planner)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        wm = load_world_model(args.ckpt)
        cfg = plan_config(wm.cfg, ["planner=mpc_cem", f"eval.n_evals={args.n_evals}", "eval.budget=50",
                                   "eval.n_plot_samples=0", "eval.device=cpu", *args.set])  # fmt: skip
        for part in args.parts:
            rows: list[dict] = []
            default = {"a": PART_A, "b": PART_B, "c": [k for k in LADDER if k not in PART_A[1:]]}[part]
            {"a": part_a, "b": part_b, "c": part_c}[part](cfg, wm, args.planners or default, args, rows)
            path = args.out / f"planners_{part}.json"
            old = json.loads(path.read_text()) if path.is_file() else []
            keep = [r for r in old if r["planner"] not in {r["planner"] for r in rows}]
            path.write_text(json.dumps(keep + rows, indent=1))
    every = [r for p in "abc" if (args.out / f"planners_{p}.json").is_file()
             for r in json.loads((args.out / f"planners_{p}.json").read_text())]  # fmt: skip
    plot(every, args.out / "planners_wall.png")


if __name__ == "__main__":
    main()

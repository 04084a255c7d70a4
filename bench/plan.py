"""Planning benchmark: seconds per CEM / GD plan, our batched fast rollout vs the reference's loop.

Prints one JSON object per line. Configs: ``p16`` = img_size 64 (16 patches) and ``p196`` = the reference
default (224 px -> 196 patches), both with the ViT-S/14 encoder architecture (``encoder.pretrained=false``) and
the reference predictor (depth 6, 16 x 64 heads, width 404). CEM is 300 samples x top 30 x 30 iterations x H 5
unless overridden. Times for fewer iterations than a full plan are measured per iteration and extrapolated
(``"extrapolated": true``). ``baseline`` rows time one iteration of the reference algorithm: per episode, the
observation re-encoded for all samples, ``wm.rollout`` without a cache, fp32.

    python bench/plan.py --quick                          # CPU: p16, 1 episode, 1 iteration per setting
    python bench/plan.py --device cuda --configs p16,p196 --episodes 1,10
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dinowm_core import build_world_model, load_config  # noqa: E402
from dinowm_core.config import CEMConfig, GDConfig, ObjectiveConfig, PlannerConfig  # noqa: E402
from dinowm_core.planning import PlanProblem, Rollout, make_planner, objective  # noqa: E402

CONFIGS = {
    "p16": ["encoder.pretrained=false", "img_size=64"],
    "p196": ["encoder.pretrained=false"],
}


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS so far (Linux: KiB)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def make_problem(cfg, wm, b: int, device: str):
    g = torch.Generator().manual_seed(0)
    obs = {
        "visual": (torch.rand(b, 1, 3, cfg.img_size, cfg.img_size, generator=g) * 2 - 1).to(device),
        "proprio": torch.randn(b, 1, cfg.env.proprio_dim, generator=g).to(device),
    }
    goal = {
        "visual": (torch.rand(b, 1, 3, cfg.img_size, cfg.img_size, generator=g) * 2 - 1).to(device),
        "proprio": torch.randn(b, 1, cfg.env.proprio_dim, generator=g).to(device),
    }
    with torch.no_grad():
        return obs, wm.encode_obs(obs), wm.encode_obs(goal)


def _count_cpu_attention() -> None:
    """FlopCounterMode knows the CUDA attention kernels only; count the CPU flash kernel the same way."""
    from torch.utils import flop_counter as fc

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in fc.flop_registry:
        fc.register_flop_formula(op)(lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))


@torch.no_grad()
def rollout_tflop_per_plan(
    wm, z0, act_dim: int, horizon: int, num_samples: int, opt_steps: int = 30
) -> float:
    """Work of one CEM plan (GEMMs + attention of every rollout, x samples x iterations), counted on 2 rows."""
    from torch.utils.flop_counter import FlopCounterMode

    from dinowm_core.planning import Rollout

    _count_cpu_attention()
    z = {k: v[:1].expand(2, *v.shape[1:]) for k, v in z0.items()}
    act = torch.zeros(2, horizon, act_dim, device=z["visual"].device)
    with FlopCounterMode(display=False) as counter:
        Rollout(wm, align=False)(z, act)
    return counter.get_total_flops() / 2 * num_samples * opt_steps / 1e12


@torch.no_grad()
def reference_cem_iteration(wm, obs, z_goal, mean, std, num_samples, topk):
    """One CEM iteration as the reference runs it: episodes in a Python loop, obs re-encoded per sample."""
    for i in range(mean.shape[0]):
        act = mean[i] + std[i] * torch.randn(num_samples, *mean.shape[1:], device=mean.device)
        act[0] = mean[i]
        obs_i = {k: v[i : i + 1].expand(num_samples, *v.shape[1:]) for k, v in obs.items()}
        z_pred, _ = wm.rollout(obs_i, act)
        loss = objective(z_pred, {k: v[i : i + 1] for k, v in z_goal.items()})
        elites = act[loss.topk(topk, largest=False).indices]
        mean[i], std[i] = elites.mean(0), elites.std(0)


def plan_once(wm, z0, zg, cfg: PlannerConfig, device: str):
    """One plan through the planner interface, one RNG stream per episode (seeds 0..B-1)."""
    planner = make_planner(cfg, wm)
    b = z0["visual"].shape[0]
    result, _ = planner.plan(z0, zg, planner.init_state(b, list(range(b)), device=device))
    return result


def bench_config(name: str, args) -> None:
    device = args.device
    cfg = load_config(CONFIGS[name])
    torch.manual_seed(0)
    wm = build_world_model(cfg).eval().to(device)
    a_dim, h = cfg.action_dim, args.horizon
    base = dict(
        config=name,
        device=device,
        patches=cfg.num_visual_tokens,
        samples=args.num_samples,
        topk=args.topk,
        horizon=h,
        full_opt_steps=30,
    )
    for b in args.episodes:
        obs, z0, zg = make_problem(cfg, wm, b, device)
        tflop = b * rollout_tflop_per_plan(wm, z0, a_dim, h, args.num_samples)  # at 30 iterations
        if args.baseline:
            mean = torch.zeros(b, h, a_dim, device=device)
            std = torch.ones_like(mean)
            if b == args.episodes[0]:  # warm-up (kernels, allocator)
                reference_cem_iteration(
                    wm, obs, zg, mean[:1].clone(), std[:1].clone(), args.num_samples, args.topk
                )
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.baseline_steps):
                reference_cem_iteration(wm, obs, zg, mean, std, args.num_samples, args.topk)
            sync(device)
            per_it = (time.perf_counter() - t0) / args.baseline_steps
            emit(
                bench="cem",
                impl="reference_loop",
                dtype="fp32",
                episodes=b,
                s_per_iter=round(per_it, 4),
                s_per_plan=round(per_it * 30, 3),
                extrapolated=args.baseline_steps != 30,
                peak_mem_mb=round(peak_mem_mb(device)),
                **base,
            )
        for dtype in args.dtypes:
            try:
                # fp32; bf16 = autocast; bf16w = autocast with the model's weights and latents stored in bf16
                # (no per-call weight casts; LayerNorm and softmax still accumulate in fp32 under autocast);
                # bf16c = bf16 with the rollout compiled (torch.compile; the warm-up call pays the compile).
                amp = dtype in ("bf16", "bf16w", "bf16u", "bf16c")
                model, z0_d, zg_d = wm, z0, zg
                align = False if dtype == "bf16u" else None  # bf16u: width not aligned (the 404-wide GEMMs)
                if dtype == "bf16w":
                    model = copy.deepcopy(wm).to(torch.bfloat16)
                    z0_d, zg_d = ({k: v.to(torch.bfloat16) for k, v in z.items()} for z in (z0, zg))

                cem = CEMConfig(num_samples=args.num_samples, topk=args.topk, chunk_size=args.chunk_size)
                base_cfg = PlannerConfig(
                    name="cem", horizon=h, cem=cem, amp=amp, align=align, compile=dtype == "bf16c"
                )
                warm_cfg, plan_cfg = (
                    base_cfg.model_copy(update={"cem": cem.model_copy(update={"opt_steps": n})})
                    for n in (1, args.opt_steps)
                )
                sync(device)
                t0 = time.perf_counter()
                plan_once(model, z0_d, zg_d, warm_cfg, device)  # warm-up (kernels, allocator)
                sync(device)
                warmup_s = time.perf_counter() - t0
                reset_peak(device)
                sync(device)
                t0 = time.perf_counter()
                res = plan_once(model, z0_d, zg_d, plan_cfg, device)
                sync(device)
                per_it = (time.perf_counter() - t0) / args.opt_steps
                fp32_loss = PlanProblem(wm, Rollout(wm), z0, zg, h, ObjectiveConfig()).loss(res.actions)
                emit(
                    bench="cem",
                    impl="batched_fast",
                    dtype=dtype,
                    episodes=b,
                    s_per_iter=round(per_it, 4),
                    s_per_plan=round(per_it * 30, 3),
                    extrapolated=args.opt_steps != 30,
                    tflop_per_plan=round(tflop, 1),
                    tflop_s=round(tflop / (per_it * 30), 1),
                    plan_loss_fp32=round(fp32_loss.mean().item(), 5),
                    chunk_size=args.chunk_size,
                    warmup_s=round(warmup_s, 2),
                    peak_mem_mb=round(peak_mem_mb(device)),
                    **base,
                )
            except Exception as e:  # e.g. no compiler backend on this machine: report it, keep measuring
                emit(bench="cem", impl="batched_fast", dtype=dtype, episodes=b, error=repr(e)[:400], **base)
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
        if args.gd_steps:
            plan_once(wm, z0, zg, PlannerConfig(name="gd", horizon=h, gd=GDConfig(opt_steps=1)), device)
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            gd = PlannerConfig(name="gd", horizon=h, gd=GDConfig(opt_steps=args.gd_steps))
            plan_once(wm, z0, zg, gd, device)
            sync(device)
            per_step = (time.perf_counter() - t0) / args.gd_steps
            emit(
                bench="gd",
                impl="batched_fast",
                dtype="fp32",
                episodes=b,
                s_per_step=round(per_step, 4),
                s_per_plan=round(per_step * 1000, 2),
                full_opt_steps=1000,
                extrapolated=args.gd_steps != 1000,
                config=name,
                device=device,
                horizon=h,
                peak_mem_mb=round(peak_mem_mb(device)),
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default="p16,p196")
    ap.add_argument("--episodes", default="1,10", help="episodes per plan call, comma-separated")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--opt-steps", type=int, default=30, help="CEM iterations to time (extrapolated to 30)")
    ap.add_argument("--baseline-steps", type=int, default=1, help="reference-loop iterations to time")
    ap.add_argument("--num-samples", type=int, default=300)
    ap.add_argument("--topk", type=int, default=30)
    ap.add_argument("--horizon", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument(
        "--gd-steps", type=int, default=10, help="GD steps to time (extrapolated to 1000); 0 = skip"
    )
    ap.add_argument("--no-baseline", dest="baseline", action="store_false")
    ap.add_argument("--quick", action="store_true", help="p16 only, 1 episode, 1 CEM iteration, 3 GD steps")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.episodes, args.opt_steps, args.gd_steps = "p16", "1", 1, 3
    args.episodes = [int(x) for x in args.episodes.split(",")]
    args.dtypes = args.dtypes.split(",")
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    emit(
        bench="env",
        torch=torch.__version__,
        device=args.device,
        threads=torch.get_num_threads(),
        machine=platform.processor() or platform.machine(),
        gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    )
    for name in args.configs.split(","):
        bench_config(name, args)


if __name__ == "__main__":
    main()

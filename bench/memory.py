"""Memory predictors: what they recall, what they cost. Prints one JSON object per line.

* ``recall``: every preset on the synthetic recall task (``dinowm_core.models.memory.recall``: a cue needed 23
  frames after it was shown; 300 Adam steps, 400 held-out sequences, accuracy with its 95% interval; chance 0.25);
* ``train_step``: training samples/s of one window (forward + backward, memory read and written) per preset,
  relative to ``vit`` at the same width and depth (the quickstart predictor: 16 tokens per frame, width 84,
  depth 2, 3 frames, batch 32), and the memory state's bytes per sample;
* ``train_step_reference``: the same at the reference sizes (196 patches, width 404, depth 6, MLP 2048; batch 2);
* ``peak``: resident memory a training step adds (fresh process per preset; on a GPU read
  ``torch.cuda.max_memory_allocated`` instead);
* ``plan``: seconds per CEM plan (64 samples x 5 iterations x H5, 4 episodes) relative to ``vit`` (which plans
  with its KV-cached rollout; memory presets read their memory through the plain rollout);
* ``length``: inference seconds for one sequence of L frames (16 ... 256) read window by window with memory,
  against a ViT whose window holds all L frames (attention over the whole context): linear vs quadratic.

    python bench/memory.py                         # everything (about 10 minutes on 2 cores)
    python bench/memory.py --only train_step,length --out bench/results/cpu/memory.json
    python bench/memory.py --only train_step --threads 1 --clock cpu   # on a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

PRESETS = ["vit", "vit_persistent", "additive_control_vit", "mag_mem_vit", "mac_mem_vit", "mac_layer_mem_vit",
           "lookup_mem_vit", "ssm_vit", "ssm_ca", "adamem", "mlstm_simple", "mamba", "transformerxl"]  # fmt: skip
ROWS: list[dict] = []


def emit(**row) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def best_of(fn, repeat: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def small_predictor(preset: str, *, tokens: int, dim: int, frames: int, capacity: int | None = None):
    import yaml

    from dinowm_core.config import MemoryConfig
    from dinowm_core.models.memory.predictor import MemoryPredictor
    from dinowm_core.models.predictor import ViTPredictor
    from dinowm_core.presets import conf_dir

    sizes = {"num_patches": tokens, "num_frames": frames, "dim": dim, "depth": 2, "heads": 2, "dim_head": 8,
             "mlp_dim": 32, "dropout": 0.0}  # fmt: skip
    if preset == "vit":
        return ViTPredictor(**sizes)
    raw = yaml.safe_load((conf_dir() / "predictor" / f"{preset}.yaml").read_text())
    memory = {"state_dim": 8, **raw.get("memory", {})}
    if capacity is not None and memory.get("store") == "segment":
        memory["capacity"] = capacity
    return MemoryPredictor(**sizes, memory=MemoryConfig(**memory), attention=raw["name"] != "mamba",
                           action_channels=4)  # fmt: skip


def bench_recall() -> None:
    from dinowm_core.models.memory import recall

    cues = recall.make_cues(4, 4, 16)
    train, test = recall.make_data(cues, 2000, 24, seed=1), recall.make_data(cues, 400, 24, seed=2)
    for preset in PRESETS:
        torch.manual_seed(0)
        pred = small_predictor(preset, tokens=4, dim=16, frames=3, capacity=24)
        start = time.perf_counter()
        recall.train(pred, train, steps=300)
        rate, lo, hi = recall.accuracy(pred, test)
        emit(case="recall", preset=preset, accuracy=round(rate, 3), ci95=[round(lo, 3), round(hi, 3)],
             n=400, chance=0.25, train_s=round(time.perf_counter() - start, 1))  # fmt: skip


def _wm(preset: str, overrides: list[str]):
    from dinowm_core import load_config
    from dinowm_core.models.build import build_world_model

    torch.manual_seed(0)
    cfg = load_config(["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=none", "img_size=64",
                       "training.has_decoder=false", *([] if preset == "vit" else [f"predictor={preset}"]),
                       "predictor.depth=2", "predictor.heads=4", "predictor.dim_head=32", "predictor.mlp_dim=256",
                       "predictor.dropout=0.0", "predictor.residual=true", *overrides])  # fmt: skip
    return cfg, build_world_model(cfg)


def _reference_predictor(preset: str):
    """``preset``'s predictor at the reference sizes: 196 patches (224 px), width 404 (DINOv2 ViT-S/14 + proprio
    and action embeddings), depth 6, 16 heads of 64, MLP 2048, 3 frames."""
    import yaml

    from dinowm_core.config import MemoryConfig
    from dinowm_core.models.memory.predictor import MemoryPredictor
    from dinowm_core.models.predictor import ViTPredictor
    from dinowm_core.presets import conf_dir

    torch.manual_seed(0)
    sizes = {"num_patches": 196, "num_frames": 3, "dim": 404, "depth": 6, "heads": 16, "dim_head": 64,
             "mlp_dim": 2048, "dropout": 0.0, "residual": True}  # fmt: skip
    if preset == "vit":
        return ViTPredictor(**sizes)
    raw = yaml.safe_load((conf_dir() / "predictor" / f"{preset}.yaml").read_text())
    return MemoryPredictor(**sizes, memory=MemoryConfig(**raw["memory"]), attention=raw["name"] != "mamba",
                           action_channels=10)  # fmt: skip


def _train_step(preset: str, scale: str = "quickstart"):
    """A closure running one training step of ``preset``'s predictor (forward + backward + SGD), and its
    parameter count and memory bytes per sample. ``scale``: the quickstart predictor (batch 32) or the reference
    one (batch 2)."""
    if scale == "reference":
        pred, batch = _reference_predictor(preset).train(), 2
    else:
        pred, batch = _wm(preset, [])[1].predictor.train(), 32
    x = torch.randn(batch, 3 * pred.num_patches, pred.dim)
    opt = torch.optim.SGD(pred.parameters(), lr=1e-3)
    has_memory = hasattr(pred, "forward_memory")
    state = pred.init_state(batch) if has_memory else {}
    if has_memory:  # a memory that holds some frames, as mid-sequence
        with torch.no_grad():
            _, state = pred.forward_memory(x, state, commit=3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = pred.forward_memory(x, state, commit=1)[0] if has_memory else pred(x)
        out.square().mean().backward()
        opt.step()

    state_bytes = sum(v[:1].numel() * v.element_size() for v in state.values())
    return step, sum(p.numel() for p in pred.parameters()), state_bytes


def bench_train_step(rounds: int = 10, clock: str = "wall", scale: str = "quickstart") -> None:
    """Every preset's step, interleaved round by round (a load that comes and goes hits all presets alike);
    the best round per preset. ``clock=cpu`` reads the process's CPU time (with 1 thread: the work, whatever
    else runs on the machine)."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    steps = {preset: _train_step(preset, scale) for preset in PRESETS}
    best = dict.fromkeys(PRESETS, float("inf"))
    for step, _, _ in steps.values():
        step()  # warm-up
    for _ in range(rounds):
        for preset, (step, _, _) in steps.items():
            t = timer()
            step()
            best[preset] = min(best[preset], timer() - t)
    for preset, (_, params, state_bytes) in steps.items():
        secs = best[preset]
        batch = 2 if scale == "reference" else 32
        emit(case="train_step", scale=scale, preset=preset, step_s=round(secs, 4), samples_per_s=round(batch / secs, 2),
             vs_vit=round(secs / best["vit"], 2), params=params, state_bytes_per_sample=state_bytes,
             clock=clock, threads=torch.get_num_threads(), rounds=rounds)  # fmt: skip


def _peak_one(preset: str) -> None:
    """In a fresh process: resident memory before and at the peak of 3 training steps (batch 32)."""
    import resource

    _, wm = _wm(preset, [])
    pred = wm.predictor.train()
    x = torch.randn(32, 3 * pred.num_patches, pred.dim)
    has_memory = hasattr(pred, "forward_memory")
    state = pred.init_state(32) if has_memory else {}
    before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    for _ in range(3):
        out = pred.forward_memory(x, state, commit=1)[0] if has_memory else pred(x)
        out.square().mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak}))


def bench_peak() -> None:
    """Peak resident memory added by a training step, per preset (fresh process each, CPU)."""
    import subprocess

    base = None
    for preset in PRESETS:
        out = subprocess.run([sys.executable, __file__, "--peak-one", preset], capture_output=True, text=True,
                             check=True)  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        added = max(0, row["peak"] - row["before"])
        base = base or added
        emit(case="peak", preset=preset, step_peak_mib=round(added / 2**20, 1), vs_vit=round(added / base, 2))


def bench_plan() -> None:
    from dinowm_core.planning.planner import make_planner

    base = None
    for preset in PRESETS:
        cfg, wm = _wm(preset, ["planner=mpc_cem", "planner.cem.num_samples=64", "planner.cem.topk=8",
                               "planner.cem.opt_steps=5", "planner.horizon=5", "planner.mpc.n_taken_actions=1"])  # fmt: skip
        wm.eval()
        planner = make_planner(cfg.planner, wm)
        g = torch.Generator().manual_seed(0)
        obs = {
            "visual": torch.rand(4, 3, 3, 64, 64, generator=g) * 2 - 1,
            "proprio": torch.randn(4, 3, 2, generator=g),
        }
        goal = {
            "visual": torch.rand(4, 1, 3, 64, 64, generator=g) * 2 - 1,
            "proprio": torch.randn(4, 1, 2, generator=g),
        }
        with torch.no_grad():
            z_obs, z_goal = wm.encode_obs(obs), wm.encode_obs(goal)
        past = torch.zeros(4, 2, cfg.action_dim)

        def plan(planner=planner, z_obs=z_obs, z_goal=z_goal, past=past):
            with torch.no_grad():
                planner.plan(z_obs, z_goal, planner.init_state(4, seeds=range(4), past_actions=past))

        secs = best_of(plan, repeat=3)
        base = base or secs
        emit(case="plan", preset=preset, plan_s=round(secs, 3), vs_vit=round(secs / base, 2))


def bench_length() -> None:
    lengths = [16, 32, 64, 128, 256]
    for preset in ["vit_full_context", "ssm_vit", "mac_mem_vit", "mlstm_simple", "transformerxl"]:
        for length in lengths:
            frames = torch.randn(8, length, 4, 16)
            if preset == "vit_full_context":
                pred = small_predictor("vit", tokens=4, dim=16, frames=length).eval()

                def run(pred=pred, frames=frames, length=length):
                    with torch.no_grad():
                        pred(frames.reshape(8, length * 4, 16))
            else:
                pred = small_predictor(preset, tokens=4, dim=16, frames=3, capacity=8).eval()

                def run(pred=pred, frames=frames, length=length):
                    with torch.no_grad():
                        state = pred.init_state(8)
                        for s in range(0, length - 2, 1):
                            _, state = pred.forward_memory(
                                frames[:, s : s + 3].reshape(8, 12, 16), state, commit=1
                            )

            emit(case="length", preset=preset, frames=length, seconds=round(best_of(run, repeat=3), 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="recall,train_step,peak,plan,length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="train_step: wall time, or process CPU time (use with --threads 1 on a busy machine)",
    )
    ap.add_argument("--out", default=None, help="also write the rows as a JSON list here")
    ap.add_argument("--peak-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_one:
        _peak_one(args.peak_one)
        return
    cases = {
        "recall": bench_recall,
        "train_step": lambda: bench_train_step(clock=args.clock),
        "train_step_reference": lambda: bench_train_step(rounds=3, clock=args.clock, scale="reference"),
        "peak": bench_peak,
        "plan": bench_plan,
        "length": bench_length,
    }
    for name in args.only.split(","):
        cases[name]()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(ROWS, indent=2))


if __name__ == "__main__":
    main()

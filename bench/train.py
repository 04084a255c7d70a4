"""Training throughput and peak memory: samples/s of full optimizer steps (forward, backward, step).

Prints one JSON object per line. Every configuration runs in a fresh subprocess so that peak memory
(CPU: ``ru_maxrss``; GPU: ``max_memory_allocated``) belongs to that configuration alone.

* ``model`` rows: synthetic in-memory batches through the loop's own ``train_step`` (optimizers as the
  reference), for the reference default (224 px, 196 patches, ViT-S/14 architecture with random weights)
  and the 16-patch config (img_size=64); with the feature cache the encoder pass is replaced by fp16 tokens.
* ``e2e`` rows: ``fit()`` on a generated Wall dataset (data loading, validation excluded from the timing).

Each row has ``s_per_step`` (best of ``--steps`` timed steps after one warm-up step), ``s_per_step_median``,
``cores_used`` (process CPU time / wall time over the timed steps: below the thread count means the machine was
shared; on 2 cores a contended fp32 16-patch step went from 7 s to 12-14 s) and the 1-minute load average
before and after the row. The reference default at batch 32 is slow on CPU: time it with ``--steps 1``.

    python bench/train.py                                  # default matrix (long on 2 CPU cores)
    python bench/train.py --kinds model --configs small --batches 32 --dtypes fp32,bf16
    python bench/train.py --kinds model --configs reference --batches 32 --dtypes bf16 --cache false --steps 1
    python bench/train.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

CONFIGS = {
    "reference": ["env=wall", "encoder.pretrained=false"],  # 224 px -> 196 px DINO input, 196 patches
    "small": ["env=wall", "encoder.pretrained=false", "img_size=64"],  # 16 patches
    # the quickstart's model, and with 16x proprio/action repeats, with the decoder on 1/8 of each batch
    "quickstart": ["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=vqvae_small", "img_size=64",
                   "frameskip=5", "num_hist=1"],
    "quickstart_rep16": ["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=vqvae_small",
                         "img_size=64", "frameskip=5", "num_hist=1", "num_proprio_repeat=16", "num_action_repeat=16"],
    "quickstart_rep16_dec8": ["env=wall", "encoder=dino_tiny", "predictor=vit_small", "decoder=vqvae_small",
                              "img_size=64", "frameskip=5", "num_hist=1", "num_proprio_repeat=16",
                              "num_action_repeat=16", "training.decoder_batch_fraction=0.125"],
}  # fmt: skip


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(name: str, batch: int, dtype: str, cache: bool, device: torch.device, steps: int) -> dict:
    from dinowm_core import build_world_model, load_config
    from dinowm_core.training.loop import LossModule, train_step
    from dinowm_core.training.optim import amp_dtype, build_optimizers, build_schedulers

    amp = "bf16" if dtype == "bf16" else "off"
    cfg = load_config([*CONFIGS[name], f"training.amp={amp}"])
    torch.manual_seed(0)
    wm = build_world_model(cfg).to(device).train()
    opts = build_optimizers(wm, cfg)
    scheds = build_schedulers(opts, cfg, 1000)
    t, s = cfg.num_window_frames, cfg.img_size
    obs = {
        "visual": torch.rand(batch, t, 3, s, s, device=device) * 2 - 1,
        "proprio": torch.randn(batch, t, cfg.env.proprio_dim, device=device),
    }
    if cache:
        obs["visual_tokens"] = torch.randn(
            batch, t, cfg.num_visual_tokens, wm.visual_dim, device=device, dtype=torch.float16
        )
    act = torch.randn(batch, t, cfg.action_dim, device=device)
    model, dt = LossModule(wm), amp_dtype(cfg, device)
    times, cpu = [], 0.0
    for i in range(steps + 1):  # the first step warms up (allocator, oneDNN primitives, cuDNN autotune)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step(model, opts, scheds, obs, act, cfg, device, dt)
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu += (time.process_time() - cpu_start) if i else 0.0
    return _timing(times[1:], batch) | {"cores_used": round(cpu / sum(times[1:]), 2)}


def _timing(times: list[float], batch: int) -> dict:
    """Best of the timed steps (the least disturbed by other load on a shared machine) and the median."""
    best, median = min(times), sorted(times)[len(times) // 2]
    return {"s_per_step": round(best, 3), "samples_per_s": round(batch / best, 2),
            "s_per_step_median": round(median, 3)}  # fmt: skip


def bench_e2e(
    name: str, batch: int, dtype: str, cache: bool, device: torch.device, steps: int, loader_workers: int = 2
) -> dict:
    from dinowm_core import load_config
    from dinowm_core.data.features import encode_dataset
    from dinowm_core.data.generate import generate
    from dinowm_core.models.build import build_world_model
    from dinowm_core.training.hooks import TrainHooks
    from dinowm_core.training.loop import fit

    class Timing(TrainHooks):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.rows = []

        def log_metrics(self, metrics, step):
            if "time/step_s" in metrics:
                self.rows.append(metrics["time/step_s"])

    with tempfile.TemporaryDirectory() as tmp:
        cfg0 = load_config(CONFIGS[name])
        data = os.path.join(tmp, "wall")
        generate("wall", 8, 60, data, img_size=cfg0.img_size, progress=False)
        amp = "bf16" if dtype == "bf16" else "off"
        cfg = load_config([*CONFIGS[name], f"data.path={data}", f"training.batch_size={batch}",
                           f"training.amp={amp}", f"data.feature_cache={str(cache).lower()}",
                           f"training.max_steps={steps + 1}", "training.log_every_steps=1",
                           "training.num_val_rollouts=0", "training.val_max_batches=1",
                           "training.num_reconstruct_samples=0", f"data.num_workers={loader_workers}"])  # fmt: skip
        if cache:
            encode_dataset(
                data, cfg.encoder.name, img_size=cfg.img_size, encoder=build_world_model(cfg).encoder
            )
        hooks = Timing(device=str(device), run_dir=tmp)
        fit(cfg, hooks)
    return _timing(hooks.rows[1:], batch)


def run_one(spec: dict) -> None:
    device = torch.device(spec["device"])
    args = (spec["config"], spec["batch"], spec["dtype"], spec["cache"], device, spec["steps"])
    load_before = os.getloadavg()[0]
    out = bench_model(*args) if spec["kind"] == "model" else bench_e2e(*args, spec["loader_workers"])
    emit(**spec, **out, peak_mem_gib=round(_peak(device), 2), threads=torch.get_num_threads(),
         interop_threads=torch.get_num_interop_threads(),
         load_avg_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default="small,reference")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--cache", default="false,true")
    ap.add_argument("--kinds", default="model,e2e")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--loader-workers", type=int, default=2, help="data.num_workers of the e2e rows")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(json.loads(args.one))
        return
    for kind in args.kinds.split(","):
        for config in args.configs.split(","):
            for batch in map(int, args.batches.split(",")):
                for dtype in args.dtypes.split(","):
                    for cache in (c == "true" for c in args.cache.split(",")):
                        spec = {"kind": kind, "config": config, "batch": batch, "dtype": dtype, "cache": cache,
                                "device": args.device, "steps": args.steps,
                                "loader_workers": args.loader_workers}  # fmt: skip
                        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                              capture_output=True, text=True)  # fmt: skip
                        if proc.returncode:
                            emit(**spec, error=proc.stderr.strip().splitlines()[-1:])
                        else:
                            sys.stdout.write(proc.stdout)
                            sys.stdout.flush()


if __name__ == "__main__":
    main()

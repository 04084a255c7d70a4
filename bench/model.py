"""Model throughput benchmark: predictor forward / forward+backward, DINOv2 encoder, a full training step.

Prints one JSON object per line. Each figure sits next to the machine's own large-matmul GFLOP/s measured in the
same run, so numbers from different machines can be compared as a fraction of what the hardware does.

    python bench/model.py                       # CPU, fp32 + bf16 autocast
    python bench/model.py --device cuda --quick # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dinowm_core import build_world_model, load_config  # noqa: E402

REFERENCE = ["encoder.pretrained=false"]  # 224 px, 196 patches, ViT-S/14 architecture, width 404
SMALL = ["encoder.pretrained=false", "img_size=64"]  # same model, 16 patches


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, device: str, min_time: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and n >= 3:
            return elapsed / n


def autocast(device: str, dtype: str):
    if dtype == "bf16":
        return torch.autocast(
            device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16
        )
    return contextlib.nullcontext()


def matmul_gflops(device: str, dtype: str, min_time: float) -> float:
    n = 8192 if device.startswith("cuda") else 2048
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    sec = timeit(lambda: a @ b, device, min_time)
    return 2 * n**3 / sec / 1e9


def vit_flops_per_token(dim: int, depth: int, inner: int, mlp: int, context: int) -> float:
    """Forward FLOPs per token of a pre-norm ViT (matmuls only; full attention over `context` tokens)."""
    per_layer = 2 * dim * 3 * inner + 2 * inner * dim + 2 * 2 * dim * mlp + 2 * 2 * context * inner
    return depth * per_layer


def bench_predictor(label, overrides, batch, device, dtype, min_time, ref_gflops):
    cfg = load_config(overrides)
    p = cfg.predictor
    n_tok = cfg.num_visual_tokens
    pred = build_world_model(cfg).predictor.to(device)  # the reference predictor for this config
    dim = pred.dim
    tokens = cfg.num_hist * n_tok
    x = torch.randn(batch, tokens, dim, device=device)
    flops_tok = vit_flops_per_token(dim, p.depth, p.heads * p.dim_head, p.mlp_dim, tokens)
    for mode in ("forward", "forward_backward"):
        if mode == "forward":
            pred.eval()

            def step():
                with torch.no_grad(), autocast(device, dtype):
                    pred(x)
        else:
            pred.train()

            def step():
                with autocast(device, dtype):
                    out = pred(x)
                out.float().square().mean().backward()

        sec = timeit(step, device, min_time)
        mult = 1 if mode == "forward" else 3
        gflops = flops_tok * tokens * batch * mult / sec / 1e9
        emit(
            bench="predictor",
            config=label,
            mode=mode,
            device=device,
            dtype=dtype,
            batch=batch,
            tokens=tokens,
            tokens_per_s=round(tokens * batch / sec),
            gflops=round(gflops, 1),
            frac_of_matmul=round(gflops / ref_gflops, 3),
            ms_per_call=round(sec * 1e3, 2),
        )


def bench_encoder(batch, device, dtype, min_time, ref_gflops):
    wm = build_world_model(load_config(REFERENCE)).to(device).eval()
    x = torch.rand(batch, 3, 196, 196, device=device) * 2 - 1

    def step():
        with torch.no_grad(), autocast(device, dtype):
            wm.encoder(x)

    sec = timeit(step, device, min_time)
    flops = vit_flops_per_token(384, 12, 384, 1536, 197) * 197 * batch
    gflops = flops / sec / 1e9
    emit(
        bench="encoder",
        config="dinov2_vits14@196",
        device=device,
        dtype=dtype,
        batch=batch,
        images_per_s=round(batch / sec, 1),
        gflops=round(gflops, 1),
        frac_of_matmul=round(gflops / ref_gflops, 3),
    )


def bench_train_step(label, overrides, batch, device, dtype, min_time, ref_gflops=None):
    cfg = load_config(overrides)
    wm = build_world_model(cfg).to(device).train()
    params = [p for p in wm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    t = cfg.num_window_frames
    obs = {
        "visual": torch.rand(batch, t, 3, cfg.img_size, cfg.img_size, device=device) * 2 - 1,
        "proprio": torch.randn(batch, t, cfg.env.proprio_dim, device=device),
    }
    act = torch.randn(batch, t, cfg.action_dim, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss, _ = wm.loss(obs, act)
        loss.backward()
        opt.step()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sec = timeit(step, device, min_time, warmup=1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # FLOPs of one whole step (encoder, predictor, decoder; forward and backward)
        step()
    tflops = counter.get_total_flops() / sec / 1e12
    emit(
        bench="train_step",
        config=label,
        device=device,
        dtype=dtype,
        batch=batch,
        samples_per_s=round(batch / sec, 2),
        s_per_step=round(sec, 3),
        achieved_tflops=round(tflops, 2),
        mfu_vs_matmul=round(tflops * 1e3 / ref_gflops, 3) if ref_gflops else None,
        peak_gpu_mem_gib=None if peak is None else round(peak, 2),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--min-time", type=float, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    ap.add_argument("--train", action="store_true", help="also time full training steps")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    min_time = args.min_time or (1.0 if gpu else 2.0)
    torch.manual_seed(0)
    emit(
        bench="machine",
        device=args.device,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        gpu=torch.cuda.get_device_name() if gpu else None,
    )
    for dtype in args.dtypes.split(","):
        ref = matmul_gflops(args.device, dtype, min_time)
        emit(bench="matmul", device=args.device, dtype=dtype, gflops=round(ref, 1))
        bench_predictor("reference_196p", REFERENCE, 32 if gpu else 4, args.device, dtype, min_time, ref)
        bench_predictor("small_16p", SMALL, 256 if gpu else 32, args.device, dtype, min_time, ref)
        bench_encoder(128 if gpu else 8, args.device, dtype, min_time, ref)
        if args.train:
            bench_train_step("reference_196p", REFERENCE, 32 if gpu else 4, args.device, dtype, min_time, ref)
            if not args.quick:
                bench_train_step("small_16p", SMALL, 32, args.device, dtype, min_time, ref)


if __name__ == "__main__":
    main()

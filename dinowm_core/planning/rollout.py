"""Fast open-loop rollout for planning (the planners' hot loop; reference section 1.7 semantics).

``fast_rollout(wm, z_obs0, act)`` returns exactly what ``wm.rollout(None, act, z_obs0=z_obs0)`` returns (up to
float rounding), but does less work:

* the observation is encoded once by the caller (the reference re-encodes obs_0 for every CEM sample, bug 12);
* **KV cache while the context grows.** Under the frame-causal mask, the keys/values of frame ``t`` at every
  layer depend only on frames ``<= t`` and on their positional embeddings, which do not move until the window
  holds ``num_hist`` frames. So for the first ``num_hist`` steps only the newest frame is pushed through the
  predictor, attending to the cached keys/values. Once the window slides every frame changes position and the
  window is recomputed (as the reference does);
* **last-frame pruning.** Only the last predicted frame is used, so the final layer computes queries, the
  MLP and the final norm for the last frame only;
* ``F.scaled_dot_product_attention`` without any mask: the frame-causal mask is applied by giving each query
  frame its key prefix, so fused (flash) kernels run instead of the masked path;
* optional bf16 autocast (``amp=True``); outputs are returned in the latents' dtype;
* **aligned width** (``align=True``, the default on CUDA): the reference width 404 is not a multiple of 8, which
  sends every bf16 GEMM with K = 404 to slow unaligned kernels (measured on an H100: 165 vs 596 TFLOP/s for a
  404- vs 416-wide K). Planning runs a copy of the predictor zero-padded to width 408 whose LayerNorms take their
  statistics over the real 404 features, so the padded features stay exactly zero and the result is unchanged.

Works with gradients (GD planning): the cache is built with ``torch.cat`` rather than in-place writes.
Anything that is not a :class:`~dinowm_core.models.predictor.ViTPredictor` in eval mode falls back to
``wm.rollout``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dinowm_core.models.predictor import ViTPredictor

Obs = dict[str, torch.Tensor]
KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, heads, L, dim_head)


def autocast_context(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``amp``, else a no-op."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _qkv(attn: torch.nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h: (B, N, D) -> q, k, v each (B, heads, N, dim_head)"""
    q, k, v = attn.to_qkv(attn.norm(h)).chunk(3, dim=-1)
    return tuple(rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (q, k, v))  # type: ignore[return-value]


def _attend(
    attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: int | None
) -> torch.Tensor:
    """q (B, h, Nq, d), k/v (B, h, Nk, d) -> (B, Nq, D).

    ``p`` set: the queries are whole frames of ``p`` tokens starting at key 0 under the frame-causal mask. Each
    query frame then attends to a key *prefix* without a mask, which lets SDPA pick its fused (flash) kernels;
    a boolean mask would force the slow path that materializes the (Nq, Nk) scores.
    """
    if p is None:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = torch.cat(
            [
                F.scaled_dot_product_attention(q[:, :, s : s + p], k[:, :, : s + p], v[:, :, : s + p])
                for s in range(0, q.shape[2], p)
            ],
            dim=2,
        )
    return attn.to_out(rearrange(out, "b h n d -> b n (h d)"))


def predict_last_frame(
    pred: ViTPredictor,
    x: torch.Tensor,
    *,
    pos_start: int = 0,
    cache: KVCache | None = None,
    keep_cache: bool = False,
) -> tuple[torch.Tensor, KVCache | None]:
    """Next-frame prediction for the last of the new frames ``x``, optionally after cached frames.

    x: (B, T*P, D) new frames (frame-major) at token positions ``pos_start ..``; ``cache`` holds the keys/values
    of the ``pos_start`` earlier tokens. -> (prediction of the frame after the last one (B, P, D), the cache
    extended with x's keys/values if ``keep_cache`` else None).
    """
    p = pred.num_patches
    n_new = x.shape[1]
    if n_new > p and (pos_start or cache is not None):
        raise ValueError("several new frames are only supported without cached frames")
    h = x + pred.pos_embedding[:, pos_start : pos_start + n_new]
    # Several new frames: frame-causal attention among them (prefix keys per frame); one frame sees all keys.
    frame = p if n_new > p else None
    new_cache: KVCache = []
    depth = len(pred.layers)
    for i, (attn, ff) in enumerate(pred.layers):
        q, k, v = _qkv(attn, h)
        if cache is not None:
            k = torch.cat([cache[i][0], k], dim=2)
            v = torch.cat([cache[i][1], v], dim=2)
        if keep_cache:
            new_cache.append((k, v))
        if i == depth - 1 and n_new > p:
            # Last layer: only the last frame's output is used, and it sees every key (no mask needed).
            h, q, frame = h[:, -p:], q[:, :, -p:], None
        h = h + _attend(attn, q, k, v, frame)
        h = h + ff(h)
    h = pred.norm(h)
    out = x[:, -p:] + h if pred.residual else h
    return out, (new_cache if keep_cache else None)


class AlignedLayerNorm(nn.Module):
    """LayerNorm over the first ``dim`` features of a zero-padded width; the padded outputs stay exactly 0."""

    def __init__(self, ln: nn.LayerNorm, padded: int) -> None:
        super().__init__()
        self.dim, self.eps = ln.normalized_shape[0], ln.eps
        pad = (0, padded - self.dim)
        self.weight = nn.Parameter(F.pad(ln.weight.detach(), pad), requires_grad=False)
        self.bias = nn.Parameter(F.pad(ln.bias.detach(), pad), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., padded) with zeros past ``dim`` -> (..., padded); statistics in fp32 as autocast's LayerNorm"""
        xf = x.float()
        var, mean = torch.var_mean(xf[..., : self.dim], dim=-1, unbiased=False, keepdim=True)
        return (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def _pad_linear(lin: nn.Linear, in_pad: int, out_pad: int) -> None:
    with torch.no_grad():
        lin.weight = nn.Parameter(F.pad(lin.weight, (0, in_pad, 0, out_pad)), requires_grad=False)
        if lin.bias is not None:
            lin.bias = nn.Parameter(F.pad(lin.bias, (0, out_pad)), requires_grad=False)


def aligned_predictor(pred: ViTPredictor, multiple: int = 8) -> ViTPredictor:
    """A frozen copy of ``pred`` whose residual width is zero-padded up to a multiple of ``multiple``.

    Feed it inputs padded with zeros; its outputs' padded features are exactly zero and the first ``pred.dim``
    features equal ``pred``'s outputs up to float rounding.
    """
    padded = -(-pred.dim // multiple) * multiple
    extra = padded - pred.dim
    out = copy.deepcopy(pred).requires_grad_(False).eval()
    if extra == 0:
        return out
    out.dim = padded
    out.pos_embedding = nn.Parameter(F.pad(pred.pos_embedding.detach(), (0, extra)), requires_grad=False)
    for attn, ff in out.layers:
        attn.norm = AlignedLayerNorm(attn.norm, padded)
        _pad_linear(attn.to_qkv, extra, 0)
        _pad_linear(attn.to_out[0], 0, extra)
        ff.net[0] = AlignedLayerNorm(ff.net[0], padded)
        _pad_linear(ff.net[1], extra, 0)
        _pad_linear(ff.net[4], 0, extra)
    out.norm = AlignedLayerNorm(out.norm, padded)
    return out


# One aligned copy per (predictor, device, weights version): planning calls the rollout many times per plan.
_ALIGNED: weakref.WeakKeyDictionary[ViTPredictor, tuple[tuple, ViTPredictor]] = weakref.WeakKeyDictionary()


def _aligned_for(pred: ViTPredictor) -> ViTPredictor:
    first = next(pred.parameters())
    key = (first.device, first.dtype, sum(p._version for p in pred.parameters()))
    hit = _ALIGNED.get(pred)
    if hit is None or hit[0] != key:
        hit = (key, aligned_predictor(pred))
        _ALIGNED[pred] = hit
    return hit[1]


def _can_fast(wm: Any) -> bool:
    pred = getattr(wm, "predictor", None)
    return isinstance(pred, ViTPredictor) and not pred.training


def _rollout_frames(
    wm: Any, pred: ViTPredictor, z_obs0: Obs, act: torch.Tensor, *, kv_cache: bool, amp: bool, extra: int
) -> torch.Tensor:
    """The rollout loop of :func:`fast_rollout` -> z (B, N+1, P', D); ``extra`` = padded width of ``pred``."""
    n, num_hist = z_obs0["visual"].shape[1], wm.num_hist
    dtype = z_obs0["visual"].dtype
    with autocast_context(act.device, amp):
        z0 = wm.combine(z_obs0, wm.encode_act(act[:, :n]).to(dtype))
        frames = list(z0.unbind(1))  # each (B, P', D)
        cache: KVCache | None = None
        for t in range(n, act.shape[1] + 1):
            if cache is not None:
                # Context still growing (t <= num_hist): push only the newest frame through the predictor.
                keep = t < num_hist
                new = F.pad(frames[-1], (0, extra)) if extra else frames[-1]
                out, cache = predict_last_frame(
                    pred, new, pos_start=(t - 1) * pred.num_patches, cache=cache, keep_cache=keep
                )
            else:
                window = torch.cat(frames[-num_hist:], dim=1)  # (B, T*P', D), frame-major
                if extra:
                    window = F.pad(window, (0, extra))
                keep = kv_cache and t < num_hist
                out, cache = predict_last_frame(pred, window, keep_cache=keep)
            out = out[..., : out.shape[-1] - extra].to(dtype)
            if t < act.shape[1]:
                out = wm.replace_actions(out[:, None], act[:, t : t + 1]).to(dtype)[:, 0]
            frames.append(out)
    return torch.stack(frames, dim=1)


@functools.cache
def _compiled_rollout_frames() -> Any:
    """One compiled rollout per process; dynamo specializes it per (model, batch, horizon) and caches each graph.

    The whole horizon is unrolled into one graph, so the aligned LayerNorms, GELUs, residual adds and the KV-cache
    concatenations fuse into a few kernels between the GEMMs and the attention (the memory-bound part that keeps
    the H100 at a third of its matmul rate in eager mode).
    """
    return torch.compile(_rollout_frames, dynamic=False)


def fast_rollout(
    wm: Any,
    z_obs0: Obs,
    act: torch.Tensor,
    *,
    kv_cache: bool = True,
    amp: bool = False,
    align: bool | None = None,
    compile: bool = False,
) -> tuple[Obs, torch.Tensor]:
    """``wm.rollout`` from encoded context latents, with a KV cache and last-frame pruning.

    ``align`` (default: on CUDA) runs a width-aligned copy of the predictor (see the module docstring); it
    applies to inference only, since the copy is frozen. ``compile`` runs the loop through ``torch.compile``
    (the first call per shape compiles; worth it for plans of many iterations, mainly on GPU).

    z_obs0 {"visual": (B, n, P, Dv), "proprio": (B, n, Dp)}, act (B, N, f*d), N >= n ->
    (z_obs {"visual": (B, N+1, P, Dv), "proprio": (B, N+1, Dp)}, z (B, N+1, P', D)).
    """
    if not _can_fast(wm):
        with autocast_context(act.device, amp):
            z_obs, z = wm.rollout(None, act, z_obs0=z_obs0)
        dtype = z_obs0["visual"].dtype
        return {k: v.to(dtype) for k, v in z_obs.items()}, z.to(dtype)
    pred: ViTPredictor = wm.predictor
    if align is None:
        align = act.device.type == "cuda"
    if align and not torch.is_grad_enabled():
        width = pred.dim
        pred = _aligned_for(pred)
        extra = pred.dim - width
    else:
        extra = 0
    n = z_obs0["visual"].shape[1]
    if act.shape[1] < n:
        raise ValueError(f"rollout needs at least {n} actions (one per context frame), got {act.shape[1]}")
    run = _compiled_rollout_frames() if compile else _rollout_frames
    z = run(wm, pred, z_obs0, act, kv_cache=kv_cache, amp=amp, extra=extra)
    z_obs, _ = wm.separate(z)
    return z_obs, z

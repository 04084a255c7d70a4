"""Fast open-loop rollout for planning (the planners' hot loop; reference section 1.7 semantics).

``Rollout(wm)(z_obs0, act)`` returns exactly what ``wm.rollout(None, act, z_obs0=z_obs0)`` returns (up to float
rounding), but does less work:

* the observation is encoded once by the caller (the reference re-encodes obs_0 for every CEM sample, bug 12);
* **KV cache while the context grows.** Under the frame-causal mask, the keys/values of frame ``t`` at every
  layer depend only on frames ``<= t`` and on their positional embeddings, which do not move until the window
  holds ``num_hist`` frames. So for the first ``num_hist`` steps only the newest frame is pushed through the
  predictor, attending to the cached keys/values. Once the window slides every frame changes position and the
  window is recomputed (as the reference does);
* **last-frame pruning** and ``F.scaled_dot_product_attention`` without any mask: both are the predictor's
  :meth:`~dinowm_core.models.predictor.ViTPredictor.forward_last`;
* optional bf16 autocast (``amp=True``); outputs are returned in the latents' dtype;
* **aligned width** (``align=True``, the default on CUDA): planning runs the predictor's
  :meth:`~dinowm_core.models.predictor.ViTPredictor.width_aligned` copy (width 404 -> 408, which sends the bf16
  GEMMs to aligned kernels), built once per :class:`Rollout`.

Works with gradients (GD planning). Anything that is not a :class:`~dinowm_core.models.predictor.ViTPredictor`
in eval mode falls back to ``wm.rollout``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
import torch.nn.functional as F

from dinowm_core.models.predictor import KVCache, ViTPredictor

Obs = dict[str, torch.Tensor]


def autocast_context(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``amp``, else a no-op."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _can_fast(wm: Any) -> bool:
    pred = getattr(wm, "predictor", None)
    return isinstance(pred, ViTPredictor) and not pred.training


def _rollout_frames(
    wm: Any, pred: ViTPredictor, z_obs0: Obs, act: torch.Tensor, *, kv_cache: bool, amp: bool, extra: int
) -> torch.Tensor:
    """The rollout loop of :class:`Rollout` -> z (B, N+1, P', D); ``extra``: how many zero features ``pred`` adds."""
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
                out, cache = pred.forward_last(
                    new, pos_start=(t - 1) * pred.num_patches, cache=cache, keep_cache=keep
                )
            else:
                window = torch.cat(frames[-num_hist:], dim=1)  # (B, T*P', D), frame-major
                if extra:
                    window = F.pad(window, (0, extra))
                keep = kv_cache and t < num_hist
                out, cache = pred.forward_last(window, keep_cache=keep)
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


class Rollout:
    """``wm.rollout`` from encoded context latents, with a KV cache and last-frame pruning (see the module).

    Build one per world model and plan with it many times. ``align`` (default: on CUDA) runs a width-aligned copy
    of the predictor, built on the first call without gradients and reused by every later one: a Rollout assumes
    the world model's weights (and device) stay as they are. Calls with gradients enabled (GD planning) use the
    plain predictor, since the copy is frozen. ``compile`` runs the loop through ``torch.compile`` (one compiled
    function per process; the first call per shape compiles; worth it for plans of many iterations, mainly on GPU).
    """

    def __init__(
        self,
        wm: Any,
        *,
        kv_cache: bool = True,
        amp: bool = False,
        align: bool | None = None,
        compile: bool = False,
    ) -> None:
        self.wm = wm
        self.kv_cache = kv_cache
        self.amp = amp
        self.align = align
        self.compile = compile
        self._aligned: ViTPredictor | None = None

    def _predictor(self, act: torch.Tensor) -> tuple[ViTPredictor, int]:
        """The predictor to run -> (predictor, its padded width minus the real one)."""
        pred: ViTPredictor = self.wm.predictor
        align = act.device.type == "cuda" if self.align is None else self.align
        if not align or torch.is_grad_enabled():
            return pred, 0
        if self._aligned is None:
            self._aligned = pred.width_aligned()
        return self._aligned, self._aligned.dim - pred.dim

    def __call__(
        self, z_obs0: Obs, act: torch.Tensor, memory: dict[str, torch.Tensor] | None = None
    ) -> tuple[Obs, torch.Tensor]:
        """z_obs0 {"visual": (B, n, P, Dv), "proprio": (B, n, Dp)}, act (B, N, f*d), N >= n ->
        (z_obs {"visual": (B, N+1, P, Dv), "proprio": (B, N+1, Dp)}, z (B, N+1, P', D)).
        ``memory``: a memory predictor's memory of the frames before the context, read and never written.
        """
        wm = self.wm
        if not _can_fast(wm):
            with autocast_context(act.device, self.amp):
                extra = (
                    {"memory": memory} if memory else {}
                )  # world models without memory take no such argument
                z_obs, z = wm.rollout(None, act, z_obs0=z_obs0, **extra)
            dtype = z_obs0["visual"].dtype
            return {k: v.to(dtype) for k, v in z_obs.items()}, z.to(dtype)
        pred, extra = self._predictor(act)
        n = z_obs0["visual"].shape[1]
        if act.shape[1] < n:
            raise ValueError(
                f"rollout needs at least {n} actions (one per context frame), got {act.shape[1]}"
            )
        run = _compiled_rollout_frames() if self.compile else _rollout_frames
        z = run(wm, pred, z_obs0, act, kv_cache=self.kv_cache, amp=self.amp, extra=extra)
        z_obs, _ = wm.separate(z)
        return z_obs, z


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
    """One :class:`Rollout` call. Planning loops should build a :class:`Rollout` once instead: this rebuilds the
    aligned copy of the predictor on every call.
    """
    return Rollout(wm, kv_cache=kv_cache, amp=amp, align=align, compile=compile)(z_obs0, act)

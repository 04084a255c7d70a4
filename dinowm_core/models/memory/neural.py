"""Neural memory: a small MLP whose weights are trained at test time, one copy per sample (Titans).

Behrouz, Zhong, Mirrokni, "Titans: Learning to Memorize at Test Time" (2024). The memory is an MLP
``M(k) = gelu(k W1) W2`` whose *fast weights* ``W1, W2`` are the memory state. Writing a frame takes one gradient
step on its associative "surprise" loss ``l(M; x) = ||M(k) - v||^2`` (eq. 12, ``k = x W_K``, ``v = x W_V``; we
average over tokens and width) with momentum and forgetting (eq. 13-14)::

    S_t = eta_t * S_{t-1} - theta_t * grad l(M_{t-1}; x_t)      (momentum of the surprise)
    M_t = (1 - alpha_t) * M_{t-1} + S_t                          (weight decay = forgetting)

with data-dependent rates ``theta_t`` (lr), ``eta_t`` (momentum), ``alpha_t`` (decay) per sample and frame.
Reading is ``M(q)`` with ``q = x W_Q`` (eq. 15) and never changes the memory.

The outer (learned) parameters are the projections, the initial fast weights and the rate layer; the inner
gradient is written out analytically (a two-layer MLP), so it also runs under ``torch.no_grad`` and
``torch.inference_mode`` (planning), and under grad it stays differentiable for the outer loop.

Shape letters: B batch, T frames, P tokens per frame, D width, Q queries, K key width, H hidden width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dinowm_core.models.memory.base import RetrievalStore, State, fp32, grouped


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    """d gelu(z) / dz for the exact (erf) gelu: Phi(z) + z * phi(z)."""
    cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + z * pdf


def surprise_grads(
    k: torch.Tensor, v: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, P, K), v (B, P, D), w1 (B, K, H), w2 (B, H, D) -> (g1 (B, K, H), g2 (B, H, D)).

    The gradient of each sample's surprise ``mean_{P, D} (gelu(k W1) W2 - v)^2`` with respect to that sample's own
    fast weights (Titans eq. 12-13), by hand: autograd cannot run inside ``torch.inference_mode``, and a closed form
    needs no per-sample autograd tricks."""
    z = torch.bmm(k, w1)  # (B, P, H)
    a = F.gelu(z)
    err = torch.bmm(a, w2) - v  # (B, P, D)
    d_out = err * (2.0 / (err.shape[1] * err.shape[2]))
    g2 = torch.bmm(a.transpose(1, 2), d_out)
    d_z = torch.bmm(d_out, w2.transpose(1, 2)) * _gelu_grad(z)
    g1 = torch.bmm(k.transpose(1, 2), d_z)
    return g1, g2


def _rate_logit(value: float, cap: float | None) -> tuple[float, float]:
    """A rate ``max * sigmoid(logit)`` that equals ``value`` at init -> (max, logit).

    The max is ``2 * value`` (room to grow either way), capped at ``cap`` (1 for momentum and decay, so that
    ``1 - alpha`` and ``eta`` stay in [0, 1]); a zero rate stays zero (max 0)."""
    top = 2.0 * value if cap is None else min(cap, 2.0 * value)
    ratio = value / top if top > 0 else 0.5
    ratio = min(
        max(ratio, 1e-6), 1.0 - 1e-6
    )  # a rate of exactly 1 (or 0 of a positive max) has no finite logit
    return top, math.log(ratio / (1.0 - ratio))


class NeuralMemory(RetrievalStore):
    """Per-sample fast-weight MLP memory written by momentum gradient steps on its surprise (Titans)."""

    def __init__(
        self,
        dim: int,
        *,
        key_dim: int | None = None,
        hidden: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        decay: float = 0.01,
        data_dependent: bool = True,
    ) -> None:
        super().__init__()
        if lr < 0 or not 0 <= momentum <= 1 or not 0 <= decay <= 1:
            raise ValueError(f"need lr >= 0 and momentum, decay in [0, 1]; got {lr=}, {momentum=}, {decay=}")
        key_dim = dim if key_dim is None else key_dim
        hidden = 2 * key_dim if hidden is None else hidden
        self.dim, self.key_dim, self.hidden = dim, key_dim, hidden
        self.data_dependent = data_dependent
        self.to_k = nn.Linear(dim, key_dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_q = nn.Linear(dim, key_dim, bias=False)
        # Queries start equal to keys, so that at init a frame's own tokens recall what writing it stored.
        with torch.no_grad():
            self.to_q.weight.copy_(self.to_k.weight)
        self.w1_init = nn.Parameter(torch.randn(key_dim, hidden) / math.sqrt(key_dim))
        self.w2_init = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(hidden))

        (lr_max, lr_logit), (mom_max, mom_logit), (dec_max, dec_logit) = (
            _rate_logit(lr, None),
            _rate_logit(momentum, 1.0),
            _rate_logit(decay, 1.0),
        )
        self.register_buffer("rate_max", torch.tensor([lr_max, mom_max, dec_max]), persistent=False)
        logits = torch.tensor([lr_logit, mom_logit, dec_logit])
        if data_dependent:
            # Zero weights: the rates start at the given values for every frame, and learn to depend on it.
            self.to_rates = nn.Linear(dim, 3)
            with torch.no_grad():
                self.to_rates.weight.zero_()
                self.to_rates.bias.copy_(logits)
        else:
            self.rate_logits = nn.Parameter(logits)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        """-> {"w1": (B, K, H), "w2": (B, H, D), "m1", "m2": zeros like them}, fp32.

        Each sample owns a copy of the initial weights (still tied to ``w1_init``/``w2_init`` in the graph, so the
        initialisation is learned)."""
        device = self.w1_init.device if device is None else torch.device(device)
        w1 = self.w1_init.float().to(device).unsqueeze(0).expand(batch_size, -1, -1).clone()
        w2 = self.w2_init.float().to(device).unsqueeze(0).expand(batch_size, -1, -1).clone()
        return {"w1": w1, "w2": w2, "m1": torch.zeros_like(w1), "m2": torch.zeros_like(w2)}

    def _rates(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, P, D) fp32 -> (B, T, 3): (lr, momentum, decay) per sample and frame."""
        if self.data_dependent:
            logits = F.linear(x.mean(dim=2), self.to_rates.weight.float(), self.to_rates.bias.float())
        else:
            logits = self.rate_logits.float().expand(*x.shape[:2], 3)
        return self.rate_max.float() * torch.sigmoid(logits)

    def write(self, frames: torch.Tensor, state: State) -> State:
        """frames (B, T, P, D), oldest first -> the state after one surprise step per frame (T = 0: ``state``)."""
        if frames.shape[1] == 0:
            return state
        with fp32(frames.device):
            x = frames.float()
            keys = F.linear(x, self.to_k.weight.float())  # (B, T, P, K)
            values = F.linear(x, self.to_v.weight.float())  # (B, T, P, D)
            rates = self._rates(x)[..., None, None]  # (B, T, 3, 1, 1): broadcasts over a weight matrix
            w1, w2, m1, m2 = state["w1"], state["w2"], state["m1"], state["m2"]
            for t in range(frames.shape[1]):
                theta, eta, alpha = rates[:, t, 0], rates[:, t, 1], rates[:, t, 2]
                g1, g2 = surprise_grads(keys[:, t], values[:, t], w1, w2)
                # Titans eq. 13-14; out of place, so the caller's state is untouched.
                m1 = eta * m1 - theta * g1
                m2 = eta * m2 - theta * g2
                w1 = (1.0 - alpha) * w1 + m1
                w2 = (1.0 - alpha) * w2 + m2
        return {"w1": w1, "w2": w2, "m1": m1, "m2": m2}

    def read(self, query: torch.Tensor, state: State) -> torch.Tensor:
        """query (B*n, Q, D) -> (B*n, Q, D): M(q) with each row's episode weights; the state is not changed."""
        batch = state["w1"].shape[0]
        with fp32(query.device):
            q = F.linear(grouped(query.float(), batch), self.to_q.weight.float())  # (B, n, Q, K)
            n = q.shape[1]
            # The n rows of a group share one weight matrix: fold them into the token axis instead of copying it.
            q = rearrange(q, "b n q k -> b (n q) k")
            out = torch.bmm(F.gelu(torch.bmm(q, state["w1"])), state["w2"])
            out = rearrange(out, "b (n q) d -> (b n) q d", n=n)
        return out.to(query.dtype)

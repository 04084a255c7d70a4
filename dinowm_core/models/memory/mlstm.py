"""Per-token mLSTM: xLSTM's matrix memory with exponential gating (Beck et al., 2024, "xLSTM: Extended Long
Short-Term Memory", section 2.3 and appendix A.3).

Each of the P tokens of a frame has its own matrix memory per head (token p at frame t reads token p's frames <= t
only). The stabilized recurrence (eqs. 19-27 of the paper, with log f_t = logsigmoid(f~_t)):

    m_t  = max(log f_t + m_{t-1}, i~_t)
    i'_t = exp(i~_t - m_t),    f'_t = exp(log f_t + m_{t-1} - m_t)
    C_t  = f'_t C_{t-1} + i'_t v_t k_t^T,    n_t = f'_t n_{t-1} + i'_t k_t
    h_t  = o_t * (C_t q_t) / max(|n_t . q_t|, exp(-m_t)),    o_t = sigmoid(W_o x_t)

m is only a scale: (C, n, m) stands for the unstabilized memory C exp(m), so the parallel form (appendix A.3's
stabilized quadratic form) can treat the memory carried in from before the window as one more "frame" whose weight
at frame t is exp(log F_t + m_{-1}), log F_t = sum_{r<=t} log f_r. Its row maximum is exactly the recurrent m_t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from dinowm_core.models.memory.base import RecurrentCell, State, fp32
from dinowm_core.models.memory.ssm import check_commit, segsum


class mLSTMMemory(RecurrentCell):  # noqa: N801 (the paper's name)
    """A per-token, multi-head mLSTM cell.

    State: ``{"C": (B, P, H, hd, hd), "n": (B, P, H, hd), "m": (B, P, H)}``, C indexed (value, key)."""

    def __init__(self, dim: int, *, num_tokens: int, heads: int = 2, head_dim: int = 16) -> None:
        super().__init__()
        inner = heads * head_dim
        self.dim, self.num_tokens, self.heads, self.head_dim = dim, num_tokens, heads, head_dim
        # One projection for queries, keys, values and the output gate (the caller's dtype), one for the scalar
        # input and forget gates of every head (fp32: they are exponentiated).
        self.qkvo = nn.Linear(dim, 4 * inner)
        self.gates = nn.Linear(dim, 2 * heads)
        self.out_proj = nn.Linear(inner, dim)
        # xLSTM's init: gates start input-independent, forget gates open (sigmoid(3..6) ~ 0.95..0.998) so that
        # heads begin with memories of ~20 to ~400 frames, input gates near exp(0) = 1.
        with torch.no_grad():
            nn.init.zeros_(self.gates.weight)
            nn.init.normal_(self.gates.bias[:heads], std=0.1)
            self.gates.bias[heads:].copy_(torch.linspace(3.0, 6.0, heads))

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        device = self.gates.bias.device if device is None else device
        lead = (batch_size, self.num_tokens, self.heads)
        zeros = dict(dtype=torch.float32, device=device)
        return {
            "C": torch.zeros(*lead, self.head_dim, self.head_dim, **zeros),
            "n": torch.zeros(*lead, self.head_dim, **zeros),
            "m": torch.zeros(lead, **zeros),
        }

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., D) -> fp32 q, k, v (..., H, hd), i~, log f (..., H) and o (..., H*hd)."""
        q, k, v, o = rearrange(self.qkvo(x), "... (four h d) -> four ... h d", four=4, h=self.heads)
        with fp32(x.device):
            i_pre, f_pre = F.linear(x.float(), self.gates.weight.float(), self.gates.bias.float()).chunk(
                2, dim=-1
            )
            k = k.float() / math.sqrt(self.head_dim)
            o = torch.sigmoid(rearrange(o.float(), "... h d -> ... (h d)"))
            return q.float(), k, v.float(), i_pre, F.logsigmoid(f_pre), o

    def _output(self, h: torch.Tensor, o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """h (..., H, hd), o (..., H*hd) -> (..., D) in the caller's dtype."""
        with fp32(h.device):
            h = o * rearrange(h, "... h d -> ... (h d)")
        return self.out_proj(h.to(dtype)).to(dtype)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, P, D), state -> (output (B, P, D), state after this frame)."""
        q, k, v, i_pre, log_f, o = self._inputs(x)
        with fp32(x.device):
            c_prev, n_prev, m_prev = state["C"], state["n"], state["m"]
            m = torch.maximum(log_f + m_prev, i_pre)
            i_gate, f_gate = (i_pre - m).exp(), (log_f + m_prev - m).exp()
            c = f_gate[..., None, None] * c_prev + i_gate[..., None, None] * einsum(
                v, k, "... v, ... k -> ... v k"
            )
            n = f_gate[..., None] * n_prev + i_gate[..., None] * k
            num = einsum(c, q, "... v k, ... k -> ... v")
            den = torch.maximum(einsum(n, q, "... k, ... k -> ...").abs(), (-m).exp())
            h = num / den[..., None]
        return self._output(h, o, x.dtype), {"C": c, "n": n, "m": m}

    def scan(self, x: torch.Tensor, state: State, commit: int | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T, P, D) -> (outputs (B, T, P, D), state after the first ``commit`` frames).

        The outputs come from the stabilized quadratic form, O(T^2) per token and head; the committed state is the
        same sum taken at frame ``commit - 1`` (closed form, no loop)."""
        commit = check_commit(commit, x.shape[1])
        q, k, v, i_pre, log_f, o = self._inputs(x)
        with fp32(x.device):
            q, k, v = (rearrange(t, "b t p h d -> b p h t d") for t in (q, k, v))
            i_pre, log_f = (rearrange(t, "b t p h -> b p h t") for t in (i_pre, log_f))
            c_prev, n_prev, m_prev = state["C"], state["n"], state["m"]
            # log weight of frame s's write at frame t (-inf for s > t), and of the carried-in memory at frame t
            log_d = segsum(log_f) + i_pre[..., None, :]  # (B, P, H, T, T)
            log_prev = log_f.cumsum(dim=-1) + m_prev[..., None]  # (B, P, H, T)
            m = torch.maximum(log_d.amax(dim=-1), log_prev)  # == the recurrent m_t
            d, w_prev = (log_d - m[..., None]).exp(), (log_prev - m).exp()
            scores = einsum(q, k, "b p h t d, b p h s d -> b p h t s") * d
            num = einsum(scores, v, "b p h t s, b p h s d -> b p h t d")
            num = num + w_prev[..., None] * einsum(c_prev, q, "b p h v k, b p h t k -> b p h t v")
            den = scores.sum(dim=-1) + w_prev * einsum(n_prev, q, "b p h k, b p h t k -> b p h t")
            h = num / torch.maximum(den.abs(), (-m).exp())[..., None]
            if commit == 0:
                kept = dict(state)
            else:
                last, w_last = (
                    d[..., commit - 1, :],
                    w_prev[..., commit - 1],
                )  # zero weight for frames >= commit
                kept = {
                    "C": einsum(last, v, k, "b p h s, b p h s v, b p h s k -> b p h v k")
                    + w_last[..., None, None] * c_prev,
                    "n": einsum(last, k, "b p h s, b p h s k -> b p h k") + w_last[..., None] * n_prev,
                    "m": m[..., commit - 1],
                }
        return self._output(rearrange(h, "b p h t d -> b t p h d"), o, x.dtype), kept

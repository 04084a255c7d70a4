"""Per-token Mamba-2 cell: the selective scan with one scalar decay per head (state-space duality, SSD).

Mamba-2 (Dao & Gu, 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
State Space Duality", sections 6-7) restricts Mamba's decay matrix to a scalar per head:

    h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t^T,    y_t = h_t C_t + D x_t,    out = W_out(y * silu(z)),

with h_t (head_dim, N) per head, x_t the head's slice of the expanded input, delta_t and A scalars per head, and
B_t, C_t (N) shared by the heads. Because the decay no longer depends on the state index, a window's outputs are a
masked attention-like product, ``y = (L o C B^T) (delta x)`` with ``L[t, s] = exp(sum_{s < r <= t} delta_r A)``:
matrix products over (T, T) instead of Mamba-1's per-frame elementwise updates of the whole (E, N) state. That is
what makes it cheap in plain PyTorch: the (B, P, E, N) state is read once per window and written once, where
:class:`~dinowm_core.models.memory.ssm.SelectiveSSM` touches it several times per frame, forward and backward.

As in our Mamba-1 cell, the short causal convolution before the scan is left out (the predictor's other sublayers
mix neighbouring frames and tokens), and the recurrence runs in fp32 (autocast off).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from dinowm_core.models.memory.base import RecurrentCell, State, fp32
from dinowm_core.models.memory.ssm import check_commit, segsum


def head_count(inner: int, head_dim: int = 64) -> int:
    """The number of heads that splits ``inner`` channels evenly with heads closest to ``head_dim`` wide
    (Mamba-2's default head width is 64; 168 channels -> 3 heads of 56, 808 -> 8 of 101)."""
    divisors = [h for h in range(1, inner + 1) if inner % h == 0]
    return min(divisors, key=lambda h: (abs(inner / h - head_dim), h))


class SelectiveSSD(RecurrentCell):
    """Mamba-2's selective scan per token, in plain PyTorch. State: ``{"h": (B, P, N, H, hd)}``, H * hd = expand * dim
    (N before the channels: reading and writing the state are then plain batched matrix products, no transposed copy).

    ``head_dim``: the head width aimed at (see :func:`head_count`); ``chunk`` bounds the frames processed as one (T, T) product; longer windows carry the state between chunks."""

    def __init__(
        self,
        dim: int,
        *,
        num_tokens: int,
        state_dim: int = 16,
        expand: int = 2,
        head_dim: int = 64,
        chunk: int = 64,
    ) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        inner = expand * dim
        self.dim, self.num_tokens, self.state_dim, self.inner, self.chunk = (
            dim,
            num_tokens,
            state_dim,
            inner,
            chunk,
        )
        self.heads = head_count(inner, head_dim)
        self.head_dim = inner // self.heads
        # One projection gives x, the gate z, B, C and the per-head step (Mamba-2's parallel projections).
        self.in_proj = nn.Linear(dim, 2 * inner + 2 * state_dim + self.heads)
        # Mamba-2's init: steps log-uniform in [1e-3, 1e-1] (stored through softplus^-1), A uniform in [1, 16].
        dt = torch.exp(torch.rand(self.heads) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(self.heads).uniform_(1, 16).log())
        self.D_skip = nn.Parameter(torch.ones(self.heads))
        self.out_proj = nn.Linear(inner, dim)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        device = self.A_log.device if device is None else device
        shape = (batch_size, self.num_tokens, self.state_dim, self.heads, self.head_dim)
        return {"h": torch.zeros(shape, dtype=torch.float32, device=device)}

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., D) -> fp32 delta * x (..., H, hd), x (..., H, hd), z (..., E), B, C (..., N), log decay (..., H)."""
        xs, z, b_t, c_t, dt = self.in_proj(x).split(
            [self.inner, self.inner, *[self.state_dim] * 2, self.heads], -1
        )
        with fp32(x.device):
            xs = rearrange(F.silu(xs.float()), "... (h d) -> ... h d", h=self.heads)
            delta = F.softplus(dt.float() + self.dt_bias.float())
            log_decay = -delta * self.A_log.float().exp()
            return delta[..., None] * xs, xs, z.float(), b_t.float(), c_t.float(), log_decay

    def _output(self, y: torch.Tensor, xs: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """y, xs (..., H, hd), z (..., E) -> (..., D): skip, gate and output projection, in the caller's dtype."""
        with fp32(y.device):
            y = rearrange(y + self.D_skip.float()[:, None] * xs, "... h d -> ... (h d)") * F.silu(z)
        return self.out_proj(y.to(dtype)).to(dtype)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, P, D), state -> (output (B, P, D), state after this frame)."""
        dx, xs, z, b_t, c_t, log_decay = self._inputs(x)
        with fp32(x.device):
            write = einsum(dx, b_t, "b p h d, b p n -> b p n h d")
            h = torch.addcmul(write, log_decay.exp()[..., None, :, None], state["h"])
            y = einsum(h, c_t, "b p n h d, b p n -> b p h d")
        return self._output(y, xs, z, x.dtype), {"h": h}

    def _chunk(self, dx: torch.Tensor, b_t: torch.Tensor, c_t: torch.Tensor, log_decay: torch.Tensor,
               h: torch.Tensor, states: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
        """dx (B, L, P, H, hd), b_t, c_t (B, L, P, N), log_decay (B, L, P, H), h (B, P, N, H, hd) ->
        (y without the skip (B, L, P, H, hd), the state after each of the first ``states`` frames).

        Only the states asked for are formed: each is one pass over the (B, P, N, H, hd) state."""
        log_decay = rearrange(log_decay, "b l p h -> b p h l")
        decay = segsum(log_decay).exp()  # (B, P, H, L, L): what survives at frame t of frame s's write
        since_start = log_decay.cumsum(
            dim=-1
        ).exp()  # (B, P, H, L): what survives of the state before the chunk
        scores = einsum(c_t, b_t, "b t p n, b s p n -> b p t s")[:, :, None] * decay
        y = einsum(scores, dx, "b p h t s, b s p h d -> b t p h d")
        carried = einsum(c_t, h, "b t p n, b p n h d -> b t p h d")
        y = torch.addcmul(y, carried, rearrange(since_start, "b p h t -> b t p h")[..., None])
        out = []
        for n in states:  # decay[t, s] is 0 for s > t: row n - 1 weighs the writes of frames < n only
            weighted = dx * rearrange(decay[..., n - 1, :], "b p h s -> b s p h")[..., None]
            write = einsum(weighted, b_t, "b s p h d, b s p n -> b p n h d")
            out.append(torch.addcmul(write, since_start[..., None, :, n - 1, None], h))
        return y, out

    def scan(self, x: torch.Tensor, state: State, commit: int | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T, P, D) -> (outputs (B, T, P, D), state after the first ``commit`` frames)."""
        frames = x.shape[1]
        commit = check_commit(commit, frames)
        dx, xs, z, b_t, c_t, log_decay = self._inputs(x)
        ys, h, kept = [], state["h"], dict(state) if commit == 0 else None
        with fp32(x.device):
            for start in range(0, frames, self.chunk):
                end = min(start + self.chunk, frames)
                part = slice(start, end)
                # the state at the commit frame if it falls in this chunk; the chunk's last state if one follows
                wanted = (
                    *([commit - start] if start < commit <= end else []),
                    *([end - start] if end < frames else []),
                )
                y, states = self._chunk(
                    dx[:, part], b_t[:, part], c_t[:, part], log_decay[:, part], h, wanted
                )
                ys.append(y)
                if start < commit <= end:
                    kept = {"h": states[0]}
                if end < frames:
                    h = states[-1]
        assert kept is not None  # the chunk holding the commit frame (>= 1) set it
        return self._output(torch.cat(ys, dim=1), xs, z, x.dtype), kept

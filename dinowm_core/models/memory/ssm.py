"""Per-token state-space cells: a time-invariant diagonal SSM and Mamba's selective scan.

Both mix information across frames separately for each of the P tokens of a frame (patch p at frame t sees patch p
at frames <= t only), keep their memory in a per-sample :data:`~dinowm_core.models.memory.base.State` and compute
the same thing in two forms: a parallel :meth:`scan` for training and a one-frame :meth:`step` for planning.

* :class:`SSMMemory`: a diagonal linear SSM in the style of S4D (Gu et al., 2022, "On the Parameterization and
  Initialization of Diagonal State Space Models") and the LRU (Orvieto et al., 2023, "Resurrecting Recurrent Neural
  Networks for Long Sequences"). Per channel d and state index n:

      h_t = a h_{t-1} + b x_t,    y_t = sum_n c h_t + skip x_t,    a = exp(-exp(log_neg_a)) in (0, 1).

  Being time-invariant, its scan is a causal convolution,  h_t = a^{t+1} h_{-1} + sum_{s<=t} a^{t-s} b x_s,
  computed with a (T, T) lower-triangular decay kernel.
* :class:`SelectiveSSM`: the selective scan of Mamba (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling with
  Selective State Spaces", Alg. 2 and eq. 4), with an input-dependent step delta_t and projections B_t, C_t:

      h_t = exp(delta_t A) h_{t-1} + (delta_t B_t) x_t,    y_t = C_t h_t + D x_t,    out = W_out(y * silu(z)).

  Its scan is chunked as in the SSD reference of Mamba-2 (Dao & Gu, 2024, "Transformers are SSMs", listing 1):
  inside a chunk, segment sums of the log-decays give every state at once; the state is carried between chunks.

Recurrence math runs in fp32 (autocast off); projections into and out of it follow the caller's autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, repeat
from torch import nn

from dinowm_core.models.memory.base import RecurrentCell, State, fp32


def segsum(x: torch.Tensor) -> torch.Tensor:
    """x (..., L) -> (..., L, L): ``out[..., t, s] = sum_{s < r <= t} x[..., r]`` for s <= t, -inf above the diagonal.

    With x the log-decay of each frame, ``exp(out)[t, s]`` is how much of frame s's contribution survives at frame t
    (0 for future frames). Summed from masked copies rather than as a difference of cumulative sums, so a strongly
    decaying segment keeps its precision (Mamba-2's ``segsum``)."""
    length = x.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=x.device)
    x = repeat(x, "... r -> ... r s", s=length)
    out = x.masked_fill(~ones.tril(-1), 0).cumsum(dim=-2)
    return out.masked_fill(~ones.tril(), -math.inf)


def check_commit(commit: int | None, frames: int) -> int:
    """The number of frames after which :meth:`RecurrentCell.scan` returns its state (None: all of them)."""
    commit = frames if commit is None else commit
    if not 0 <= commit <= frames:
        raise ValueError(f"commit={commit} is not between 0 and the {frames} frames of the window")
    return commit


def _linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in fp32 whatever the module's dtype (x is already fp32)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x, layer.weight.float(), bias)


class SSMMemory(RecurrentCell):
    """A per-token diagonal linear SSM (S4D / LRU-style, time-invariant). State: ``{"h": (B, P, D, N)}``."""

    def __init__(self, dim: int, *, num_tokens: int, state_dim: int = 16) -> None:
        super().__init__()
        self.dim, self.num_tokens, self.state_dim = dim, num_tokens, state_dim
        self.in_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        # Decays log-spaced in rate from a = 0.999 (~1000 frames of memory) to a = 0.5 (~1 frame), the same spread
        # in every channel, so that short and long memories both exist from the start (S4D-style init).
        rate = torch.logspace(math.log10(-math.log(0.999)), math.log10(-math.log(0.5)), state_dim)
        self.log_neg_a = nn.Parameter(repeat(rate.log(), "n -> d n", d=dim).clone())
        # The LRU's normalisation b = sqrt(1 - a^2): a slow state does not grow larger than the input it averages.
        self.b = nn.Parameter(repeat((1 - torch.exp(-2 * rate)).sqrt(), "n -> d n", d=dim).clone())
        self.c = nn.Parameter(torch.randn(dim, state_dim) / math.sqrt(state_dim))
        self.skip = nn.Parameter(torch.ones(dim))

    def log_decay(self) -> torch.Tensor:
        """log a = -exp(log_neg_a): (D, N), fp32, always < 0 so that the state never grows."""
        return -self.log_neg_a.float().exp()

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        device = self.log_neg_a.device if device is None else device
        shape = (batch_size, self.num_tokens, self.dim, self.state_dim)
        return {"h": torch.zeros(shape, dtype=torch.float32, device=device)}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, P, D), state -> (output (B, P, D), state after this frame)."""
        u = self.in_proj(x)
        with fp32(x.device):
            u = u.float()
            h = self.log_decay().exp() * state["h"] + self.b.float() * u[..., None]
            y = einsum(h, self.c.float(), "b p d n, d n -> b p d") + self.skip.float() * u
        return self.out_proj(y.to(x.dtype)).to(x.dtype), {"h": h}

    def scan(self, x: torch.Tensor, state: State, commit: int | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T, P, D) -> (outputs (B, T, P, D), state after the first ``commit`` frames)."""
        frames = x.shape[1]
        commit = check_commit(commit, frames)
        u = self.in_proj(x)
        with fp32(x.device):
            u, h0 = u.float(), state["h"]
            log_a, b, c = self.log_decay(), self.b.float(), self.c.float()
            t = torch.arange(frames, device=x.device)
            lag = (t[:, None] - t[None, :]).float()  # (T, T): t - s
            # kernel[t, s] = a^{t-s} for s <= t, 0 for the future (masked before exp: no inf * 0 in backward)
            kernel = (lag[..., None, None] * log_a).masked_fill((lag < 0)[..., None, None], -math.inf).exp()
            carried = ((t[:, None, None] + 1) * log_a).exp()  # (T, D, N): a^{t+1}, what is left of h_{-1}
            # Contracting n in the kernel first keeps the (B, T, P, D, N) states of every frame out of memory.
            y = einsum(einsum(kernel, b * c, "t s d n, d n -> t s d"), u, "t s d, b s p d -> b t p d")
            y = y + einsum(carried * c, h0, "t d n, b p d n -> b t p d") + self.skip.float() * u
            if commit == 0:
                kept = dict(state)
            else:
                fresh = einsum(kernel[commit - 1, :commit] * b, u[:, :commit], "s d n, b s p d -> b p d n")
                kept = {"h": fresh + carried[commit - 1] * h0}
        return self.out_proj(y.to(x.dtype)).to(x.dtype), kept


class SelectiveSSM(RecurrentCell):
    """Mamba's selective scan per token, in plain PyTorch. State: ``{"h": (B, P, E, N)}``, E = expand * dim.

    Mamba's short causal convolution before the scan is left out: inside the window the predictor's attention already
    mixes neighbouring frames, and without it the state is the SSM state alone. delta's projection is low-rank
    (rank ceil(dim / 16)) as in Mamba: W_delta = W_up W_down."""

    def __init__(
        self, dim: int, *, num_tokens: int, state_dim: int = 16, expand: int = 2, chunk: int = 8
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
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state_dim, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        # Mamba's init: steps delta log-uniform in [1e-3, 1e-1], stored through softplus^-1 in the bias.
        dt = torch.exp(torch.rand(inner) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A = -(1, 2, ..., N) in every channel.
        self.A_log = nn.Parameter(
            repeat(torch.arange(1, state_dim + 1).float().log(), "n -> e n", e=inner).clone()
        )
        self.D_skip = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        device = self.A_log.device if device is None else device
        shape = (batch_size, self.num_tokens, self.inner, self.state_dim)
        return {"h": torch.zeros(shape, dtype=torch.float32, device=device)}

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., D) -> fp32 u, z, delta (..., E) and B_t, C_t (..., N): what the scan needs from each frame."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        with fp32(x.device):
            u = F.silu(u.float())
            dt, b_t, c_t = _linear32(self.x_proj, u).split(
                [self.dt_rank, self.state_dim, self.state_dim], dim=-1
            )
            delta = F.softplus(_linear32(self.dt_proj, dt))
        return u, z.float(), delta, b_t, c_t

    def _output(self, y: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """y, z (..., E) -> (..., D): the gated output projection, in the caller's dtype."""
        with fp32(y.device):
            y = y * F.silu(z)
        return self.out_proj(y.to(dtype)).to(dtype)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, P, D), state -> (output (B, P, D), state after this frame)."""
        u, z, delta, b_t, c_t = self._inputs(x)
        with fp32(x.device):
            a = -self.A_log.float().exp()
            h = (delta[..., None] * a).exp() * state["h"] + (delta * u)[..., None] * b_t[..., None, :]
            y = einsum(h, c_t, "b p e n, b p n -> b p e") + self.D_skip.float() * u
        return self._output(y, z, x.dtype), {"h": h}

    def _chunk(
        self, u: torch.Tensor, delta: torch.Tensor, b_t: torch.Tensor, c_t: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u, delta (B, L, P, E), b_t, c_t (B, L, P, N), h (B, P, E, N) -> (y (B, L, P, E), state after the L frames)."""
        log_decay = einsum(delta, -self.A_log.float().exp(), "b l p e, e n -> b p e n l")
        # decay[t, s]: what survives at frame t of frame s's input; since_start[t]: of the state before the chunk.
        decay, since_start = segsum(log_decay).exp(), log_decay.cumsum(dim=-1).exp()
        inputs = einsum(delta * u, b_t, "b l p e, b l p n -> b p e n l")
        hs = einsum(decay, inputs, "b p e n t s, b p e n s -> b p e n t") + since_start * h[..., None]
        y = einsum(hs, c_t, "b p e n t, b t p n -> b t p e") + self.D_skip.float() * u
        return y, hs[..., -1]

    def scan(self, x: torch.Tensor, state: State, commit: int | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T, P, D) -> (outputs (B, T, P, D), state after the first ``commit`` frames).

        Memory per chunk is O(B P E N L^2): ``chunk`` trades it against the number of sequential chunk steps."""
        frames = x.shape[1]
        commit = check_commit(commit, frames)
        if frames < self.chunk:
            # A window shorter than a chunk (training windows of num_hist frames): stepping is cheaper than
            # materialising the chunk's (B, P, E, N, L, L) decays (5.5x at 3 frames, width 84, measured on CPU).
            return super().scan(x, state, commit)
        u, z, delta, b_t, c_t = self._inputs(x)
        # Chunks never straddle the commit frame, so the committed state is the last state of a chunk.
        bounds = [*range(0, commit, self.chunk), *range(commit, frames, self.chunk), frames]
        ys, h, kept = [], state["h"], dict(state) if commit == 0 else None
        with fp32(x.device):
            for start, end in zip(bounds[:-1], bounds[1:], strict=True):
                part = slice(start, end)
                y, h = self._chunk(u[:, part], delta[:, part], b_t[:, part], c_t[:, part], h)
                ys.append(y)
                if end == commit:
                    kept = {"h": h}
        assert kept is not None  # the chunk ending at commit (>= 1) set it
        return self._output(torch.cat(ys, dim=1), z, x.dtype), kept

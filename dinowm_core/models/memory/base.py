"""What every memory store agrees on: explicit per-sample state, and the two shapes a store comes in.

A memory predictor remembers what left its window of ``num_hist`` frames. Its *store* (what is remembered) is an
``nn.Module`` whose learned parameters are ordinary weights, saved in checkpoints like any others, and whose
*memory* is a :data:`State`: a dict of tensors shaped ``[B, ...]`` (one row per sample: two samples never share or
touch each other's memory), created by ``init_state(batch_size)``, passed in and returned, never kept on the
module and never saved in a checkpoint. Update math runs in fp32 (autocast off inside the stores).

**The one rule** (training, validation, ``rollout``, the planners and the service): the memory holds the real
frames *before* the predictor's window. A frame is written once, when it leaves the window (training: the first
``stride`` frames of each window of a long trajectory; MPC: the frames that executed actions pushed out of the
context). The frames inside the window are seen by attention (and by a recurrent cell's scan, below); imagined
frames (CEM / GD candidates) are never written, so every candidate reads its episode's memory unchanged.

Two kinds of store:

* :class:`RetrievalStore` (``NeuralMemory``, ``LookupMemory``): ``read(query, state)`` answers queries from the
  memory without changing it, and ``write(frames, state)`` commits frames in order. ``query`` may hold
  ``n`` rows per state row (``B * n`` rows, grouped: rows ``i*n .. i*n+n-1`` read state row ``i``), so planning
  candidates read their episode's memory without copying it.
* :class:`RecurrentCell` (``SSMMemory``, ``SelectiveSSM``, ``SelectiveSSD``, ``mLSTMMemory``): a causal sequence mixer across
  frames. ``scan(x, state, commit)`` runs the window's frames from the memory state (the output at frame ``t``
  depends on the state and frames ``<= t`` only) and returns the state after the first ``commit`` frames: the
  frames that leave the window. ``step(x_t, state)`` is the same computation one frame at a time; the two agree
  (tests: to 1e-5).

Shape letters: B batch, T frames, P tokens per frame, D width, M memory tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

State = dict[str, torch.Tensor]


@contextlib.contextmanager
def fp32(device: torch.device | str) -> Iterator[None]:
    """Autocast off on ``device``'s type: memory updates accumulate over many frames, so they run in fp32 even
    under bf16 autocast (cast the inputs with ``.float()`` inside)."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def detach_state(state: State) -> State:
    """The same memory, cut from the graph (truncated backprop between windows)."""
    return {k: v.detach() for k, v in state.items()}


def select_state(state: State, index: torch.Tensor | list[int]) -> State:
    """Rows ``index`` of every tensor (e.g. one sample of a batch)."""
    index = torch.as_tensor(index, dtype=torch.long)
    return {k: v.index_select(0, index.to(v.device)) for k, v in state.items()}


def repeat_state(state: State, n: int) -> State:
    """Each row repeated ``n`` times, grouped (row ``i`` -> rows ``i*n .. i*n+n-1``): a recurrent cell's state for
    ``n`` candidates of each episode (a copy; retrieval stores read grouped queries instead)."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in state.items()}


def cat_states(states: list[State]) -> State:
    """Batch states of several groups of samples (same keys) into one."""
    return {k: torch.cat([s[k] for s in states]) for k in states[0]}


def grouped(query: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*n, ...) -> (B, n, ...): the rows of each state row together (see :class:`RetrievalStore`)."""
    if query.shape[0] % batch:
        raise ValueError(f"{query.shape[0]} query rows do not split into groups for {batch} memory rows")
    return query.reshape(batch, query.shape[0] // batch, *query.shape[1:])


class RetrievalStore(nn.Module):
    """A memory read by queries and written with whole frames (see the module docstring)."""

    dim: int

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        raise NotImplementedError

    def read(self, query: torch.Tensor, state: State) -> torch.Tensor:
        """query (B*n, Q, D) -> (B*n, M, D): what the memory returns for each row; the state is not changed."""
        raise NotImplementedError

    def write(self, frames: torch.Tensor, state: State) -> State:
        """frames (B, T, P, D), oldest first -> the state after writing them (T may be 0: unchanged)."""
        raise NotImplementedError


class RecurrentCell(nn.Module):
    """A causal recurrence across frames, carried from window to window (see the module docstring)."""

    dim: int

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, P, D): one frame -> (output (B, P, D), state after it)."""
        raise NotImplementedError

    def scan(self, x: torch.Tensor, state: State, commit: int | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T, P, D) -> (outputs (B, T, P, D), the state after the first ``commit`` frames (None: all T;
        0: ``state`` itself)). The default runs :meth:`step`; cells override it with a parallel form."""
        commit = x.shape[1] if commit is None else commit
        outs, kept = [], state if commit == 0 else None
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outs.append(y)
            if t + 1 == commit:
                kept = state
        return torch.stack(outs, dim=1), kept if kept is not None else state

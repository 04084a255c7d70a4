"""Recurrent memory cells (SSM, selective scan, mLSTM): the parallel training scan equals the planning step, is
causal, carries memory across windows, keeps samples and tokens apart, and runs its state in fp32."""

from __future__ import annotations

import pytest
import torch

from dinowm_core.models.memory.base import RecurrentCell, State, select_state
from dinowm_core.models.memory.mlstm import mLSTMMemory
from dinowm_core.models.memory.ssd import SelectiveSSD, head_count
from dinowm_core.models.memory.ssm import SelectiveSSM, SSMMemory

DIM, TOKENS = 16, 3
ATOL = 1e-5

FACTORIES = {
    "ssm": lambda: SSMMemory(DIM, num_tokens=TOKENS, state_dim=8),
    # chunk 4: 13 frames make four chunks, and commit=2 falls inside the first one
    "selective": lambda: SelectiveSSM(DIM, num_tokens=TOKENS, state_dim=8, expand=2, chunk=4),
    "ssd": lambda: SelectiveSSD(DIM, num_tokens=TOKENS, state_dim=8, expand=2, head_dim=8, chunk=4),
    "mlstm": lambda: mLSTMMemory(DIM, num_tokens=TOKENS, heads=2, head_dim=8),
}
STATE_SHAPES = {
    "ssm": {"h": (TOKENS, DIM, 8)},
    "selective": {"h": (TOKENS, 2 * DIM, 8)},
    "ssd": {"h": (TOKENS, 8, 4, 8)},  # N = 8, 32 channels in 4 heads of 8
    "mlstm": {"C": (TOKENS, 2, 8, 8), "n": (TOKENS, 2, 8), "m": (TOKENS, 2)},
}


@pytest.fixture(params=list(FACTORIES))
def kind(request) -> str:
    return request.param


def make_cell(kind: str) -> RecurrentCell:
    """A seeded cell whose parameters are moved off their structured init (no accidental symmetries)."""
    torch.manual_seed(0)
    cell = FACTORIES[kind]()
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return cell


def frames(batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, n, TOKENS, DIM, generator=torch.Generator().manual_seed(seed))


def warm_state(cell: RecurrentCell, batch: int, seed: int = 100) -> State:
    """A non-trivial memory: the state after scanning a few earlier random frames."""
    with torch.no_grad():
        _, state = cell.scan(frames(batch, 6, seed), cell.init_state(batch))
    return state


def stepped(cell: RecurrentCell, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
    """Outputs (B, T, P, D) of stepping frame by frame, and the state after 0, 1, ..., T frames."""
    outs, states = [], [state]
    for t in range(x.shape[1]):
        y, state = cell.step(x[:, t], state)
        outs.append(y)
        states.append(state)
    return torch.stack(outs, dim=1), states


def assert_states_close(a: State, b: State, atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=ATOL, msg=f"state[{key!r}]")


@pytest.mark.parametrize("length", [1, 5, 13])
def test_parallel_scan_equals_stepping(kind, length):
    cell = make_cell(kind)
    x, state = frames(2, length, 1), warm_state(cell, 2)
    with torch.no_grad():
        ref_out, ref_states = stepped(cell, x, state)
        for commit in sorted({0, min(2, length), length}):
            out, kept = cell.scan(x, state, commit)
            torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=ATOL)
            assert_states_close(kept, ref_states[commit])
        out, kept = cell.scan(x, state)  # commit=None: all frames
        assert_states_close(kept, ref_states[-1])
    assert ref_out.abs().amax() > 1e-2  # a real signal, not zeros agreeing with zeros


def test_scan_is_causal(kind):
    cell, t = make_cell(kind), 4
    x, state = frames(2, 9, 2), warm_state(cell, 2)
    x2 = x.clone()
    x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
    with torch.no_grad():
        out, _ = cell.scan(x, state)
        out2, _ = cell.scan(x2, state)
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], atol=1e-6, rtol=0)
    changed = (out2[:, t + 1 :] - out[:, t + 1 :]).abs().amax(dim=(0, 2, 3))
    assert (changed > 1e-3).all(), changed


def test_memory_from_before_the_window_reaches_it(kind):
    cell = make_cell(kind)
    x = frames(2, 8, 3)
    with torch.no_grad():
        fresh, _ = cell.scan(x, cell.init_state(2))
        remembered, _ = cell.scan(x, warm_state(cell, 2))
    differs = (fresh - remembered).abs().amax(dim=(0, 2, 3))
    assert (differs > 1e-4).all(), differs  # every frame of the window, the last included


@pytest.mark.parametrize("split", [1, 5])
def test_two_windows_equal_one_sequence(kind, split):
    cell = make_cell(kind)
    x, state = frames(2, 11, 4), warm_state(cell, 2)
    with torch.no_grad():
        whole, whole_state = cell.scan(x, state)
        first, carried = cell.scan(x[:, :split], state)
        second, final = cell.scan(x[:, split:], carried)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=ATOL, rtol=ATOL)
    assert_states_close(final, whole_state)


def test_batched_equals_per_sample(kind):
    cell = make_cell(kind)
    x, state = frames(2, 7, 5), warm_state(cell, 2)
    with torch.no_grad():
        out, kept = cell.scan(x, state, commit=3)
        for i in range(2):
            alone, alone_kept = cell.scan(x[i : i + 1], select_state(state, [i]), commit=3)
            torch.testing.assert_close(out[i : i + 1], alone, atol=1e-6, rtol=1e-6)
            assert_states_close(select_state(kept, [i]), alone_kept, atol=1e-6)
    assert (out[0] - out[1]).abs().amax() > 1e-3


@pytest.mark.parametrize("where", ["frames", "state"])
def test_tokens_are_independent(kind, where):
    cell, p = make_cell(kind), 1
    x, state = frames(1, 6, 6), warm_state(cell, 1)
    x2, state2 = x.clone(), dict(state)
    if where == "frames":
        x2[:, :, p] += torch.randn_like(x2[:, :, p])
    else:
        state2 = {k: v.clone() for k, v in state.items()}
        for v in state2.values():
            v[:, p] += 0.5 * torch.randn_like(v[:, p])
    with torch.no_grad():
        out, kept = cell.scan(x, state)
        out2, kept2 = cell.scan(x2, state2)
    others = [q for q in range(TOKENS) if q != p]
    torch.testing.assert_close(out2[:, :, others], out[:, :, others], atol=1e-6, rtol=0)
    assert_states_close(
        {k: v[:, others] for k, v in kept2.items()}, {k: v[:, others] for k, v in kept.items()}
    )
    assert (out2[:, :, p] - out[:, :, p]).abs().amax() > 1e-3


def test_state_shapes_and_fp32_under_bf16_autocast(kind):
    cell = make_cell(kind)
    state = cell.init_state(2, device="cpu")
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: (2, *s) for k, s in STATE_SHAPES[kind].items()
    }
    assert all(v.dtype == torch.float32 for v in state.values())
    x = frames(2, 5, 7)
    for dtype in (torch.bfloat16, torch.float32):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out, kept = cell.scan(x.to(dtype), warm_state(cell, 2), commit=3)
            y, stepped_state = cell.step(x[:, 0].to(dtype), kept)
        assert out.dtype == y.dtype == dtype
        assert out.shape == x.shape and y.shape == x[:, 0].shape
        assert torch.isfinite(out).all() and torch.isfinite(y).all()
        for s in (kept, stepped_state):
            assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in s.values())


def test_gradients_reach_parameters_and_initial_state_without_in_place_changes(kind):
    cell = make_cell(kind)
    state = {k: v.clone().requires_grad_(True) for k, v in warm_state(cell, 2).items()}
    before = {k: v.detach().clone() for k, v in state.items()}
    x = frames(2, 6, 8).requires_grad_(True)
    out, kept = cell.scan(x, state, commit=4)
    y, stepped_state = cell.step(x[:, 0], state)
    loss = out.square().sum() + sum(v.square().sum() for v in kept.values()) + y.square().sum()
    loss.backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().amax() > 0, name
    for key, v in state.items():
        assert v.grad is not None and v.grad.abs().amax() > 0, key
        assert torch.equal(v.detach(), before[key]), key  # scan and step returned new tensors
    assert x.grad is not None and x.grad.abs().amax() > 0
    assert all(stepped_state[k] is not state[k] for k in state)


def test_ssm_decays_cover_short_and_long_memory():
    a = SSMMemory(DIM, num_tokens=TOKENS, state_dim=8).log_decay().detach().exp()
    assert a.min().item() == pytest.approx(0.5, abs=1e-4)
    assert a.max().item() == pytest.approx(0.999, abs=1e-5)


def test_commit_out_of_range_is_refused(kind):
    cell = make_cell(kind)
    with pytest.raises(ValueError, match="commit"):
        cell.scan(frames(1, 3, 9), cell.init_state(1), commit=4)


def test_ssd_heads_split_the_channels_evenly_near_the_aimed_width():
    assert head_count(168) == 3 and head_count(808) == 8 and head_count(32, 8) == 4
    assert head_count(7, 64) == 1 and head_count(96, 32) == 3

"""Retrieval stores (NeuralMemory, LookupMemory): writes change the memory and move recall toward what was written,
reads are pure, samples never share memory, grouped reads equal repeated states, and the fp32 / no-grad paths hold.

Each test guards against a defect found in the memory variant we replace (docs/memory.md): no-op updates,
a lookup bank that is never written, one memory shared by the batch."""

import pytest
import torch

from dinowm_core.models.memory.base import State, cat_states, repeat_state, select_state
from dinowm_core.models.memory.lookup import LookupMemory
from dinowm_core.models.memory.neural import NeuralMemory, surprise_grads

D, P = 16, 6


def _clone(state: State) -> State:
    return {k: v.detach().clone() for k, v in state.items()}


def _assert_states_equal(a: State, b: State, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def _recall_err(mem: NeuralMemory, state: State, frame: torch.Tensor) -> torch.Tensor:
    """frame (B, P, D) -> (B,): mean squared error between reading with its tokens and its value projection."""
    with torch.no_grad():
        return (mem.read(frame, state) - mem.to_v(frame)).square().mean(dim=(1, 2))


# ----------------------------------------------------------------------------------------------- NeuralMemory


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_neural_write_moves_recall_toward_the_written_value(seed):
    torch.manual_seed(seed)
    mem = NeuralMemory(D)
    frames = torch.randn(3, 1, P, D)
    state = mem.init_state(3)
    before = _recall_err(mem, state, frames[:, 0])
    after = _recall_err(mem, mem.write(frames, state), frames[:, 0])
    assert (after < 0.97 * before).all(), (before, after)


def test_neural_write_changes_every_tensor_and_read_is_pure():
    torch.manual_seed(0)
    mem = NeuralMemory(D)
    state = mem.write(torch.randn(2, 1, P, D), mem.init_state(2))  # non-zero momenta
    old = _clone(state)
    new = mem.write(torch.randn(2, 2, P, D), state)
    _assert_states_equal(state, old)  # the caller's state is not modified in place
    for key in state:
        assert not torch.equal(new[key], state[key]), key
        assert new[key].dtype == torch.float32
    mem.read(torch.randn(2, 4, D), new)
    snapshot = _clone(new)
    mem.read(torch.randn(2, 4, D), new)
    _assert_states_equal(new, snapshot)
    assert mem.write(torch.randn(2, 0, P, D), new) is new  # T = 0: unchanged


@pytest.mark.parametrize("seed", [0, 1])
def test_neural_decay_forgets(seed):
    torch.manual_seed(seed)
    keep = NeuralMemory(D, decay=0.0, data_dependent=False)
    forget = NeuralMemory(D, decay=0.5, data_dependent=False)
    forget.load_state_dict({k: v for k, v in keep.state_dict().items() if k != "rate_logits"}, strict=False)
    frame_a, others = torch.randn(1, 1, P, D), torch.randn(1, 20, P, D)
    empty = keep.init_state(1)
    with_a = keep.write(frame_a, empty)
    err_keep = _recall_err(keep, keep.write(others, with_a), frame_a[:, 0])
    err_forget = _recall_err(forget, forget.write(others, with_a), frame_a[:, 0])
    assert (err_forget > 1.2 * err_keep).all(), (err_keep, err_forget)
    # What A itself left: recall of A with vs without having written it, 20 unrelated frames later.
    imprint_keep = _recall_err(keep, keep.write(others, empty), frame_a[:, 0]) - err_keep
    imprint_forget = _recall_err(forget, forget.write(others, empty), frame_a[:, 0]) - err_forget
    assert (imprint_keep > 0.01).all() and (imprint_forget.abs() < 1e-3).all(), (imprint_keep, imprint_forget)


def test_analytic_surprise_gradient_matches_autograd():
    torch.manual_seed(0)
    k, v = torch.randn(1, P, 8, dtype=torch.float64), torch.randn(1, P, D, dtype=torch.float64)
    w1 = torch.randn(1, 8, 12, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 12, D, dtype=torch.float64, requires_grad=True)
    loss = (torch.nn.functional.gelu(k @ w1) @ w2 - v).square().mean()
    auto = torch.autograd.grad(loss, [w1, w2])
    analytic = surprise_grads(k, v, w1.detach(), w2.detach())
    for a, b in zip(analytic, auto, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("data_dependent", [True, False])
def test_neural_batched_equals_per_sample(data_dependent):
    torch.manual_seed(0)
    mem = NeuralMemory(D, key_dim=8, data_dependent=data_dependent)
    if data_dependent:  # rates that really differ per sample and frame
        torch.nn.init.normal_(mem.to_rates.weight, std=0.5)
    frames, query = torch.randn(2, 3, P, D), torch.randn(2, 5, D)
    batched = mem.write(frames, mem.init_state(2))
    out = mem.read(query, batched)
    for i in range(2):
        alone = mem.write(frames[i : i + 1], mem.init_state(1))
        _assert_states_equal(select_state(batched, [i]), alone, atol=1e-6)
        torch.testing.assert_close(out[i : i + 1], mem.read(query[i : i + 1], alone), rtol=0, atol=1e-6)


def test_neural_grouped_read_equals_repeated_state():
    torch.manual_seed(0)
    mem = NeuralMemory(D)
    state = mem.write(torch.randn(2, 2, P, D), mem.init_state(2))
    query = torch.randn(2 * 3, 4, D)
    out = mem.read(query, state)
    torch.testing.assert_close(out, mem.read(query, repeat_state(state, 3)), rtol=0, atol=1e-6)
    for row in range(6):  # row i*n + j reads state row i
        alone = mem.read(query[row : row + 1], select_state(state, [row // 3]))
        torch.testing.assert_close(out[row : row + 1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_neural_write_and_read_without_grad(mode):
    torch.manual_seed(0)
    mem = NeuralMemory(D).train()
    frames, query = torch.randn(2, 2, P, D), torch.randn(2, 3, D)
    ref_state = mem.write(frames, mem.init_state(2))
    ref_out = mem.read(query, ref_state)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        state = mem.write(frames, mem.init_state(2))
        out = mem.read(query, state)
    assert not any(v.requires_grad for v in state.values()) and not out.requires_grad
    _assert_states_equal(state, {k: v.detach() for k, v in ref_state.items()}, atol=1e-6)
    torch.testing.assert_close(out, ref_out.detach(), rtol=0, atol=1e-6)


def test_neural_state_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    mem = NeuralMemory(D)
    frames, query = torch.randn(2, 2, P, D), torch.randn(2, 3, D)
    ref = mem.write(frames, mem.init_state(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = mem.write(frames, mem.init_state(2))
        out = mem.read(query, state)
        out_bf16 = mem.read(query.bfloat16(), state)
    assert all(v.dtype == torch.float32 for v in state.values())
    _assert_states_equal(state, ref, atol=1e-6)  # the update did not run in bf16
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16


def test_neural_outer_gradients_reach_the_learned_parameters():
    torch.manual_seed(0)
    mem = NeuralMemory(D).train()
    state = mem.write(torch.randn(2, 2, P, D), mem.init_state(2))  # 2 frames: momentum matters at the 2nd
    mem.read(torch.randn(2, 3, D), state).square().mean().backward()
    for name, param in mem.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------- LookupMemory


def _identity_lookup(capacity: int = 8, top_k: int = 3) -> LookupMemory:
    """Identity projections: an entry is its frame's mean token, keys and values are the entries themselves."""
    mem = LookupMemory(D, capacity=capacity, top_k=top_k)
    with torch.no_grad():
        for layer in (mem.to_entry, mem.to_key, mem.to_query, mem.to_value):
            layer.weight.copy_(torch.eye(D))
    return mem


def _frames_with_means(means: torch.Tensor) -> torch.Tensor:
    """means (B, T, D) -> frames (B, T, P, D) whose token mean is exactly ``means`` (tokens vary around it)."""
    noise = torch.randn(*means.shape[:2], P, D)
    return means[:, :, None] + noise - noise.mean(dim=2, keepdim=True)


def test_lookup_capacity_is_a_fifo_bound():
    torch.manual_seed(0)
    mem = LookupMemory(D, capacity=4)
    frames = torch.randn(2, 10, P, D)
    state = mem.write(frames, mem.init_state(2))
    assert state["valid"].sum(dim=1).tolist() == [4, 4]
    assert state["frame"].sort(dim=1).values.tolist() == [[6, 7, 8, 9]] * 2
    assert state["count"].tolist() == [10, 10]
    # The same frames written in pieces, one by one or past the end of the ring in one call, give the same bank.
    for pieces in ([3, 7], [1] * 10, [5, 5]):
        piecewise, start = mem.init_state(2), 0
        for size in pieces:
            piecewise = mem.write(frames[:, start : start + size], piecewise)
            start += size
        _assert_states_equal(piecewise, state, atol=1e-6)


def test_lookup_returns_most_similar_first_and_only_written_entries():
    torch.manual_seed(0)
    mem = _identity_lookup(capacity=8, top_k=4)
    eye = torch.eye(D)
    means = torch.stack([eye[j] * (1 + j) for j in range(6)])[None]  # frame j points along axis j
    state = mem.write(_frames_with_means(means), mem.init_state(1))
    query = (0.9 * eye[2] + 0.5 * eye[5] + 0.2 * eye[0] + 0.1 * eye[3])[None, None].expand(1, 3, D)
    values, index = mem.read_with_index(query, state)
    assert index.tolist() == [[2, 5, 0, 3]]
    torch.testing.assert_close(values[0], means[0, [2, 5, 0, 3]], rtol=0, atol=1e-5)
    torch.testing.assert_close(mem.read(query, state), values, rtol=0, atol=0)

    # Fewer valid entries than top_k: the missing ones are -1 and zero, never an unwritten slot.
    two = mem.write(_frames_with_means(means[:, :2]), mem.init_state(1))
    values, index = mem.read_with_index(query, two)
    assert index[0, 2:].tolist() == [-1, -1] and sorted(index[0, :2].tolist()) == [0, 1]
    assert values[0, 2:].abs().sum() == 0 and values[0, :2].abs().sum() > 0
    values, index = mem.read_with_index(query, mem.init_state(1))
    assert index.tolist() == [[-1] * 4] and values.abs().sum() == 0
    # top_k above the capacity pads with missing entries too.
    big = _identity_lookup(capacity=2, top_k=4)
    values, index = big.read_with_index(query, big.write(_frames_with_means(means), big.init_state(1)))
    assert index.tolist() == [[5, 4, -1, -1]] and values[0, 2:].abs().sum() == 0


def test_lookup_read_is_pure_and_never_sees_later_frames():
    torch.manual_seed(0)
    mem = _identity_lookup(capacity=8, top_k=2)
    eye = torch.eye(D)
    state = mem.write(_frames_with_means(eye[None, :4]), mem.init_state(1))
    snapshot = _clone(state)
    query = eye[7][None, None] + 0.5 * eye[1][None, None]
    before = mem.read_with_index(query, state)
    later = mem.write(_frames_with_means(eye[None, 7:8]), state)  # a frame more similar to the query
    _assert_states_equal(state, snapshot)
    after = mem.read_with_index(query, state)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert 4 not in before[1].tolist()[0] and mem.read_with_index(query, later)[1].tolist() == [[4, 1]]
    assert before[1].tolist()[0][0] == 1


def test_lookup_batched_equals_per_sample_and_grouped_equals_repeated():
    torch.manual_seed(0)
    mem = LookupMemory(D, capacity=4, top_k=3, key_dim=8)
    frames = torch.randn(2, 6, P, D)
    short = mem.write(frames[1:, :2], mem.init_state(1))  # rows with different histories
    state = cat_states([mem.write(frames[:1], mem.init_state(1)), short])
    query = torch.randn(2 * 3, 5, D)
    values, index = mem.read_with_index(query, state)
    for i, alone in enumerate([mem.write(frames[:1], mem.init_state(1)), short]):
        v_i, ix_i = mem.read_with_index(query[3 * i : 3 * i + 3], alone)
        torch.testing.assert_close(values[3 * i : 3 * i + 3], v_i, rtol=0, atol=1e-6)
        assert torch.equal(index[3 * i : 3 * i + 3], ix_i)
    v_rep, ix_rep = mem.read_with_index(query, repeat_state(state, 3))
    torch.testing.assert_close(values, v_rep, rtol=0, atol=1e-6)
    assert torch.equal(index, ix_rep)
    assert (index[3:] >= 0).sum(dim=1).tolist() == [
        2,
        2,
        2,
    ]  # the second sample has 2 entries: no leak from the 1st

    batched = mem.write(frames, mem.init_state(2))
    for i in range(2):
        _assert_states_equal(
            select_state(batched, [i]), mem.write(frames[i : i + 1], mem.init_state(1)), atol=1e-6
        )


def test_lookup_gradients_reach_every_projection_and_bank_stays_fp32():
    torch.manual_seed(0)
    mem = LookupMemory(D, capacity=4, top_k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = mem.write(torch.randn(2, 3, P, D), mem.init_state(2))
        out = mem.read(torch.randn(2, 4, D), state)
    assert state["bank"].dtype == torch.float32 and out.dtype == torch.float32
    out.square().sum().backward()
    for name, param in mem.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

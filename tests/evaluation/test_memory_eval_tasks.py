"""Memory-task episodes: the same spec gives the same episode; what is needed is shown first and out of view (in
pixels) when it is needed; the choice tasks' chance levels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinowm_core.config import ConfigError, MemoryEvalConfig
from dinowm_core.evaluation.memory import EpisodeBuilder, EpisodeSpec, episode_specs
from dinowm_core.evaluation.memory.world import render_states, replay, visible_cells

CLEAR = 4


@pytest.fixture(scope="module")
def builder():
    return EpisodeBuilder()


def _spec(task: str, k: int = 2, index: int = 0) -> EpisodeSpec:
    return EpisodeSpec(task, k, 6, index, clear_frames=CLEAR)


def _states(ep) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in p) for p in ep.proprio]


@pytest.mark.parametrize("task", ["object_recall", "colour_memory", "sequence_memory", "loop_closure"])
def test_same_seed_same_episode(task):
    a, b = EpisodeBuilder().build(_spec(task)), EpisodeBuilder().build(_spec(task))
    assert a.params == b.params and a.answer == b.answer and a.probe_index == b.probe_index
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)
    for key in a.probes:
        np.testing.assert_array_equal(a.probes[key].frames, b.probes[key].frames)
    if a.candidates is not None:
        np.testing.assert_array_equal(a.candidates, b.candidates)
    other = EpisodeBuilder().build(_spec(task, index=1))
    assert other.params != a.params  # a new world (colours, types, doors) per episode


def test_recall_object_seen_then_out_of_view_in_pixels(builder):
    ep = builder.build(_spec("object_recall"))
    kind, colour, x, y = ep.params["objects"][0]
    other = next(c for c in ep.spec.colors if c != colour)
    alt = {"doors": ep.params["doors"], "objects": [list(o) for o in ep.params["objects"]]}
    alt["objects"][0][1] = other
    states = _states(ep)
    recoloured = render_states(builder.env, alt, states)
    # the last CLEAR observed frames look the same whatever the object's colour: only memory can tell ...
    np.testing.assert_array_equal(recoloured[-CLEAR:], ep.frames[-CLEAR:])
    # ... it was shown before ...
    assert (recoloured[:-CLEAR] != ep.frames[:-CLEAR]).any()
    # ... and at the end of the way back it is in view again (the two candidates differ there)
    back = replay(builder.env.blocked, states[-1], list(ep.probes["back"].actions))
    arrival = render_states(builder.env, alt, back[-1:])[0]
    assert (arrival != ep.probes["back"].frames[-1]).any()
    assert ep.chance == 0.5 and len(ep.candidates) == 2
    assert (ep.candidates[ep.answer, 0] == ep.probes["back"].frames[-1]).all()


@pytest.mark.parametrize("k", [2, 3])
def test_colour_and_sequence_candidates(builder, k):
    colour = builder.build(_spec("colour_memory", k))
    assert colour.chance == pytest.approx(1 / len(colour.spec.colors))
    seq = builder.build(_spec("sequence_memory", k))
    assert seq.chance == pytest.approx(1 / math.factorial(k)) and len(seq.probe_index) == k
    for ep in (colour, seq):
        truth = ep.probes["back"].frames[[j - 1 for j in ep.probe_index]]
        np.testing.assert_array_equal(ep.candidates[ep.answer], truth)
        others = [c for i, c in enumerate(ep.candidates) if i != ep.answer]
        assert all((c != truth).any() for c in others)
        shown = {tuple(o[2:]) for o in ep.params["objects"]}
        builder.env.set_env_params(ep.params)
        for s in _states(ep)[-CLEAR:]:  # nothing that was shown is in the last frames' view
            assert not visible_cells(builder.env, s) & shown


def test_loop_closure_start_out_of_view_at_the_end(builder):
    ep = builder.build(_spec("loop_closure"))
    start, states = _states(ep)[0], _states(ep)
    assert not any(start[:2] in visible_cells(builder.env, s) for s in states[-CLEAR:])
    revisit = ep.probes["revisit"]
    assert tuple(int(v) for v in revisit.proprio[-1]) == start
    np.testing.assert_array_equal(revisit.frames[-1], ep.frames[0])  # the revisit sees what the start saw


def test_grid_and_errors():
    m = MemoryEvalConfig(episodes=3, num_objects=[1, 2], horizons=[6, 12])
    specs = episode_specs(m, img_size=64)
    per_task = {t: sum(s.task == t for s in specs) for t in m.tasks}
    assert per_task["object_recall"] == 3 * 2 * 2 and per_task["sequence_memory"] == 3 * 1 * 2
    assert per_task["error_horizon"] == 3 and per_task["planning"] == 0
    assert specs == episode_specs(m, img_size=64)
    with pytest.raises(ValueError, match="memory_eval.tasks"):
        MemoryEvalConfig(tasks=["object_recall", "object_recall"])
    from dinowm_core import load_config

    with pytest.raises(ConfigError, match="memory_eval.tasks"):
        load_config(["env=four_rooms", "memory_eval.tasks=[recall_everything]"])
    with pytest.raises(ValueError, match="unknown memory task"):
        EpisodeBuilder().build(EpisodeSpec("recall_everything", 2, 6, 0))

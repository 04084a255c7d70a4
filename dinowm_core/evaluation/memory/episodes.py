"""Memory-task episodes in ``four_rooms``: each first SHOWS something and later NEEDS it (docs/memory.md).

An episode is scripted with the env's BFS, so a seed gives the same episode for every model:

* a world drawn for the episode (doors, object types and colours: only this episode can tell them);
* the **observed** part: frames the model reads (written to its memory, the last ``num_hist`` as context);
* one or more **probe** paths: actions from the last observed state along a known way (back to what was
  shown, or on into the unknown), with the true frames along them;
* for the choice tasks, **candidates**: the frames at the probe's ``probe_index`` steps rendered in
  alternative worlds that differ only in what was shown (an object recoloured, objects swapped), the true
  world at ``answer``. The builder checks in pixels that the last ``clear_frames`` observed frames are
  identical in every candidate world (nothing in view can tell them apart), that some earlier observed frame
  differs (it was shown) and that the probe frames differ (it can be told when needed).

Tasks: ``object_recall`` (one object passed, walked away from, then the way back: true vs recoloured, chance
1/2), ``colour_memory`` (n objects toured, the way back to one: which of K colours, chance 1/K),
``sequence_memory`` (n objects toured in order, the tour replayed: which assignment of the objects to the
viewpoints, chance 1/n!), ``object_goal`` (object recall by planning: one object passed and walked away from, then
the goal is the view of it; the episode is the plan, see :mod:`.goal`), ``loop_closure`` (A -> B observed, then B -> A: the revisit; the first visit of B
on the way out is the control), ``error_horizon`` (held-out BFS-policy trajectories: context then open loop).
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinowm_core.envs.four_rooms import OBJECT_TYPES, RIGHT, FourRoomsEnv, random_layout, room_of
from dinowm_core.evaluation.memory.world import (
    State,
    distances_from,
    render_states,
    replay,
    view_state,
    visible_cells,
    walk,
)

CHOICE_TASKS = ("object_recall", "colour_memory", "sequence_memory")
EPISODE_TASKS = (*CHOICE_TASKS, "object_goal", "loop_closure", "error_horizon")
MAX_DRAWS = 200


@dataclass(frozen=True)
class EpisodeSpec:
    """What identifies an episode: the same spec builds the same episode anywhere."""

    task: str
    num_objects: int
    horizon: int
    index: int
    seed: int = 0
    colors: tuple[str, ...] = ("red", "green", "blue", "purple", "yellow")
    clear_frames: int = 4
    img_size: int = 64
    error_context: int = 24
    error_steps: int = 100
    goal_budget: int = 30

    def rng(self) -> np.random.Generator:
        tag = zlib.crc32(self.task.encode())
        return np.random.default_rng(np.random.SeedSequence([self.seed, tag, self.num_objects, self.horizon,
                                                             self.index]))  # fmt: skip


@dataclass
class Path:
    """Actions (m,) from the last observed state and the true frames (m, H, W, 3) / proprio (m, 3) after each."""

    actions: np.ndarray
    frames: np.ndarray
    proprio: np.ndarray


@dataclass
class MemoryEpisode:
    spec: EpisodeSpec
    params: dict[str, Any]
    #: observed frames (n, H, W, 3) uint8, proprio (n, 3), actions (n - 1,) between them
    frames: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    probes: dict[str, Path]
    #: choice tasks: (C, J, H, W, 3) frames at probe steps ``probe_index`` (1-based) of probe ``"back"``
    candidates: np.ndarray | None = None
    probe_index: list[int] = field(default_factory=list)
    answer: int = 0
    #: loop closure: the step of the observed walk at which B is first reached (1-based from context end)
    info: dict[str, Any] = field(default_factory=dict)
    #: full top-down frames of the observed part and the "back" probe (videos only)
    maps: np.ndarray | None = None

    @property
    def chance(self) -> float | None:
        return None if self.candidates is None else 1.0 / len(self.candidates)


class EpisodeBuilder:
    """Builds episodes from specs with one env per builder (an env actor holds one)."""

    def __init__(self, img_size: int = 64, colors: tuple[str, ...] | None = None) -> None:
        kwargs = {"colors": tuple(colors)} if colors else {}
        self.env = FourRoomsEnv(img_size=img_size, render_mode="rgb_array", **kwargs)

    def build(self, spec: EpisodeSpec, with_map: bool = False) -> MemoryEpisode:
        if spec.task not in EPISODE_TASKS:
            raise ValueError(f"unknown memory task {spec.task!r} (choices: {', '.join(EPISODE_TASKS)})")
        rng = spec.rng()
        for _ in range(MAX_DRAWS):
            ep = getattr(self, f"_{spec.task}")(spec, rng)
            if ep is not None:
                if with_map:
                    ep.maps = self._maps(ep)
                return ep
        hint = (f"; no way back fitted memory_eval.goal_budget={spec.goal_budget}: raise it"
                if spec.task == "object_goal" else "")  # fmt: skip
        raise RuntimeError(f"memory task {spec.task}: no valid episode in {MAX_DRAWS} draws for {spec}{hint}")

    # ---- worlds -------------------------------------------------------------------------------------
    def _world(self, spec: EpisodeSpec, rng: np.random.Generator, distinct: bool = False) -> dict[str, Any]:
        while True:
            params = random_layout(rng, "four_rooms", spec.num_objects, spec.colors, OBJECT_TYPES)
            looks = [(o[0], o[1]) for o in params["objects"]]
            if not distinct or len(set(looks)) == len(looks):
                self.env.set_env_params(params)
                return params

    def _free_state(self, rng: np.random.Generator) -> State:
        cells = self.env.free_cells()
        x, y = cells[rng.integers(len(cells))]
        return (int(x), int(y), int(rng.integers(4)))

    def _walk_away(self, start: State, avoid: set[tuple[int, int]], spec: EpisodeSpec,
                   rng: np.random.Generator) -> list[int] | None:  # fmt: skip
        """BFS walks to random far cells until ``horizon`` steps have passed and none of ``avoid`` was in
        view for the last ``clear_frames`` frames."""
        blocked, state, actions, clear = self.env.blocked, start, [], 0
        cells = self.env.free_cells()
        while len(actions) < 3 * spec.horizon + 60:
            dist = distances_from(blocked, state[:2])
            far = [tuple(map(int, c)) for c in cells if dist[c[0], c[1]] >= 6]
            target = far[rng.integers(len(far))]
            for a in walk(blocked, state, target):
                actions.append(a)
                state = replay(blocked, state, [a])[-1]
                clear = 0 if visible_cells(self.env, state) & avoid else clear + 1
                if len(actions) >= spec.horizon and clear >= spec.clear_frames:
                    return actions
        return None

    # ---- the observed part and the probes -----------------------------------------------------------
    def _observed(self, params: dict[str, Any], start: State, actions: list[int]) -> tuple[list[State], dict]:
        states = replay(self.env.blocked, start, actions)
        frames = render_states(self.env, params, states)
        return states, {"frames": frames, "proprio": np.array(states, np.float32),
                        "actions": np.array(actions, np.int64)}  # fmt: skip

    def _path(self, params: dict[str, Any], start: State, actions: list[int]) -> Path:
        states = replay(self.env.blocked, start, actions)[1:]
        return Path(np.array(actions, np.int64), render_states(self.env, params, states),
                    np.array(states, np.float32))  # fmt: skip

    def _choice(self, spec: EpisodeSpec, rng: np.random.Generator, params: dict[str, Any], states: list[State],
                observed: dict, back: Path, probe_index: list[int], worlds: list[dict[str, Any]],
                ) -> MemoryEpisode | None:  # fmt: skip
        """Candidates from ``worlds`` (the true one first), shuffled; None when the pixels do not hold the
        task's promise (see the module docstring)."""
        blocked = self.env.blocked
        back_states = replay(blocked, states[-1], list(back.actions))
        probe_states = [back_states[j] for j in probe_index]
        ctx = states[-spec.clear_frames :]
        frames, ctx_frames, seen = [], [], False
        for w in worlds:
            frames.append(render_states(self.env, w, probe_states))
            ctx_frames.append(render_states(self.env, w, ctx))
            if w is not params:
                seen = seen or bool((render_states(self.env, w, states[: -spec.clear_frames])
                                     != observed["frames"][: -spec.clear_frames]).any())  # fmt: skip
        self.env.set_env_params(params)
        if not seen or any((c != ctx_frames[0]).any() for c in ctx_frames[1:]):
            return None
        for a, b in itertools.combinations(frames, 2):
            if (a == b).all():
                return None
        order = rng.permutation(len(worlds))
        return MemoryEpisode(spec, params, **observed, probes={"back": back},
                             candidates=np.stack([frames[i] for i in order]), probe_index=probe_index,
                             answer=int(np.argmin(order)))  # fmt: skip

    def _tour(self, spec: EpisodeSpec, rng: np.random.Generator, params: dict[str, Any], shown: list[int],
              ) -> tuple[State, list[int], list[State]] | None:  # fmt: skip
        """Start somewhere, then visit a view state of each object in ``shown`` in order, then walk away."""
        views = []
        for k in shown:
            v = view_state(self.env, tuple(params["objects"][k][2:]), rng)
            if v is None:
                return None
            views.append(v)
        start = self._free_state(rng)
        actions, state = [], start
        for v in views:
            actions += walk(self.env.blocked, state, v[:2], v[2])
            state = v
        cells = {tuple(params["objects"][k][2:]) for k in shown}
        away = self._walk_away(state, cells, spec, rng)
        if away is None:
            return None
        return start, actions + away, views

    def _shown_once(self, spec: EpisodeSpec, rng: np.random.Generator) -> tuple | None:
        """A world, a tour that views object 0 and walks away -> (params, states, observed, view) or None."""
        params = self._world(spec, rng)
        tour = self._tour(spec, rng, params, [0])
        if tour is None:
            return None
        start, actions, (view,) = tour
        return (params, *self._observed(params, start, actions), view)

    def _object_recall(self, spec: EpisodeSpec, rng: np.random.Generator) -> MemoryEpisode | None:
        shown = self._shown_once(spec, rng)
        if shown is None:
            return None
        params, states, observed, view = shown
        back = self._path(params, states[-1], walk(self.env.blocked, states[-1], view[:2], view[2]))
        other = params["objects"][0][1]
        while other == params["objects"][0][1]:
            other = spec.colors[rng.integers(len(spec.colors))]
        alt = _recolour(params, 0, other)
        return self._choice(spec, rng, params, states, observed, back, [len(back.actions)], [params, alt])

    def _object_goal(self, spec: EpisodeSpec, rng: np.random.Generator) -> MemoryEpisode | None:
        """Object recall by planning: the observed part of ``object_recall``; the goal is the state that viewed
        the object (its frame and proprio), reachable within ``goal_budget`` steps (the "goal" probe is the
        shortest way there)."""
        shown = self._shown_once(spec, rng)
        if shown is None:
            return None
        params, states, observed, view = shown
        way = walk(self.env.blocked, states[-1], view[:2], view[2])
        if not 0 < len(way) <= spec.goal_budget:
            return None
        goal = self._path(params, states[-1], way)
        return MemoryEpisode(spec, params, **observed, probes={"goal": goal},
                             info={"goal_state": list(view), "object": 0, "shortest": len(way)})  # fmt: skip

    def _colour_memory(self, spec: EpisodeSpec, rng: np.random.Generator) -> MemoryEpisode | None:
        params = self._world(spec, rng)
        order = [int(k) for k in rng.permutation(spec.num_objects)]
        tour = self._tour(spec, rng, params, order)
        if tour is None:
            return None
        start, actions, views = tour
        states, observed = self._observed(params, start, actions)
        pick = int(rng.integers(len(order)))
        k, view = order[pick], views[pick]
        back = self._path(params, states[-1], walk(self.env.blocked, states[-1], view[:2], view[2]))
        true = params["objects"][k][1]
        worlds = [params] + [_recolour(params, k, c) for c in spec.colors if c != true]
        ep = self._choice(spec, rng, params, states, observed, back, [len(back.actions)], worlds)
        if ep is not None:
            ep.info = {"object": k, "colour": true}
        return ep

    def _sequence_memory(self, spec: EpisodeSpec, rng: np.random.Generator) -> MemoryEpisode | None:
        if spec.num_objects < 2:
            raise ValueError("sequence_memory needs at least 2 objects (memory_eval.num_objects)")
        params = self._world(spec, rng, distinct=True)
        order = [int(k) for k in rng.permutation(spec.num_objects)]
        tour = self._tour(spec, rng, params, order)
        if tour is None:
            return None
        start, actions, views = tour
        states, observed = self._observed(params, start, actions)
        back_actions, state, probe_index = [], states[-1], []
        for v in views:  # the tour replayed: each viewpoint in the order it was first visited
            back_actions += walk(self.env.blocked, state, v[:2], v[2])
            state = v
            probe_index.append(len(back_actions))
        if len(set(probe_index)) != len(probe_index):
            return None
        back = self._path(params, states[-1], back_actions)
        worlds = [params] + [_permute(params, order, p) for p in itertools.permutations(range(len(order)))
                             if list(p) != list(range(len(order)))]  # fmt: skip
        return self._choice(spec, rng, params, states, observed, back, probe_index, worlds)

    def _loop_closure(self, spec: EpisodeSpec, rng: np.random.Generator) -> MemoryEpisode | None:
        """A look around at A, A -> B observed (B in another room, at least ``horizon`` steps); probes: B -> A
        (the revisit) and, as the control, the first visit of B (imagined from the first frames, memory empty)."""
        params = self._world(spec, rng)
        blocked = self.env.blocked
        a = self._free_state(rng)
        dist = distances_from(blocked, a[:2])
        far = [
            tuple(map(int, c))
            for c in self.env.free_cells()
            if dist[c[0], c[1]] >= max(spec.horizon // 2, 6)
            and room_of(int(c[0]), int(c[1]), "four_rooms") not in (-1, room_of(a[0], a[1], "four_rooms"))
        ]
        if not far:
            return None
        b_cell = far[rng.integers(len(far))]
        out = walk(blocked, a, b_cell)
        if len(out) < max(spec.horizon, 2 * spec.clear_frames):
            return None
        # a look around at A first (four right turns), so the first visit of B is imagined over about as many
        # steps as the revisit of A: prediction error grows fast with the horizon
        states, observed = self._observed(params, a, [RIGHT] * 4 + out)
        seen_late = set().union(*(visible_cells(self.env, s) for s in states[-spec.clear_frames :]))
        seen_early = set().union(*(visible_cells(self.env, s) for s in states[: spec.clear_frames]))
        if a[:2] in seen_late or b_cell in seen_early:
            return None  # A must be out of view at the end, B out of view at the start
        revisit = self._path(params, states[-1], walk(blocked, states[-1], a[:2], a[2]))
        return MemoryEpisode(spec, params, **observed, probes={"revisit": revisit},
                             info={"first_visit_steps": len(out)})  # fmt: skip

    def _error_horizon(self, spec: EpisodeSpec, rng: np.random.Generator) -> MemoryEpisode:
        """A held-out trajectory of the four_rooms_bfs data policy (its own seed stream)."""
        from dinowm_core.data.four_rooms_policies import BFSPolicy

        params = self._world(spec, rng)
        start = self._free_state(rng)
        self.env._set_state(np.array(start, np.float64))
        policy = BFSPolicy(self.env, rng)
        state, actions = start, []
        for _ in range(spec.error_context - 1 + spec.error_steps):
            a = int(policy(np.array(state, np.float64))[0])
            actions.append(a)
            state = replay(self.env.blocked, state, [a])[-1]
        n = spec.error_context
        states, observed = self._observed(params, start, actions[: n - 1])
        future = self._path(params, states[-1], actions[n - 1 :])
        return MemoryEpisode(spec, params, **observed, probes={"future": future})

    def _maps(self, ep: MemoryEpisode) -> np.ndarray:
        self.env.set_env_params(ep.params)
        probe = next(iter(ep.probes.values()))
        out = []
        for p in [*ep.proprio, *probe.proprio]:
            self.env._set_state(np.asarray(p, np.float64))
            out.append(self.env.render_full(tile_size=8))
        return np.stack(out)


def _recolour(params: dict[str, Any], k: int, colour: str) -> dict[str, Any]:
    objects = [list(o) for o in params["objects"]]
    objects[k][1] = colour
    return {"doors": params["doors"], "objects": objects}


def _permute(params: dict[str, Any], order: list[int], perm: tuple[int, ...]) -> dict[str, Any]:
    """The objects' looks (type, colour) moved among the toured positions: position ``order[i]`` gets the look
    of ``order[perm[i]]``."""
    objects = [list(o) for o in params["objects"]]
    for i, p in enumerate(perm):
        src = params["objects"][order[p]]
        objects[order[i]][0], objects[order[i]][1] = src[0], src[1]
    return {"doors": params["doors"], "objects": objects}

"""Data-collection policies for ``four_rooms`` (the memory variant's presets, docs/memory.md).

* ``four_rooms_random``: uniformly random actions;
* ``four_rooms_explore``: systematic room exploration: walk (shortest path) to each room's centre in turn,
  starting with the nearest, and look around there (four right turns); then the next room;
* ``four_rooms_bfs``: shortest paths (BFS around walls and objects) to uniformly random target cells, a new
  target on arrival;
* ``two_rooms_bfs``: ``four_rooms_bfs`` in the two-rooms layout (the preset sets ``layout=two_rooms``).

The scripted policies take a random action with probability ``epsilon`` (default 0.1), so datasets also hold
turns and bumps off the shortest path. Policies return the action index as an int64 array of shape (1,), as
datasets store it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinowm_core.envs.four_rooms import (
    DIR_VEC,
    MID,
    NUM_ACTIONS,
    RIGHT,
    SIZE,
    bfs_distances,
    turn_towards,
)

#: env kwargs a preset needs (merged under the user's own ``env_kwargs`` by ``generate``)
PRESET_ENV_KWARGS: dict[str, dict[str, Any]] = {"two_rooms_bfs": {"layout": "two_rooms"}}


def _action(a: int) -> np.ndarray:
    return np.array([a], np.int64)


def next_action(blocked: np.ndarray, state: np.ndarray, target: tuple[int, int]) -> int | None:
    """The first action of a shortest path from ``state`` to cell ``target`` (None: there, or unreachable).

    Distances are computed from the target, so a step towards any neighbour one cell closer is optimal;
    ties are broken in the fixed order of ``DIR_VEC`` starting from the agent's heading (fewest turns first).
    """
    x, y, d = (int(v) for v in state[:3])
    dist = bfs_distances(blocked, target)
    here = dist[x, y]
    if here <= 0:
        return None
    for k in range(4):
        dx, dy = DIR_VEC[(d + k) % 4]
        if dist[x + dx, y + dy] == here - 1:
            return turn_towards(d, dx, dy)
    return None  # unreachable in practice: a cell at distance > 0 has a closer neighbour


class RandomDiscretePolicy:
    """Uniform over the env's discrete actions."""

    def __init__(self, env: Any, rng: np.random.Generator) -> None:
        self.n, self.rng = int(env.action_space.n), rng

    def __call__(self, state: np.ndarray) -> np.ndarray:
        return _action(int(self.rng.integers(self.n)))


class _Navigator:
    """Shared by the scripted policies: epsilon-random actions, else the subclass's plan."""

    def __init__(self, env: Any, rng: np.random.Generator, epsilon: float = 0.1) -> None:
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.env, self.rng, self.epsilon = env, rng, epsilon

    def plan(self, state: np.ndarray) -> int:
        raise NotImplementedError

    def __call__(self, state: np.ndarray) -> np.ndarray:
        a = self.plan(np.asarray(state, np.float64))  # plans advance even when a random action is taken
        if self.rng.random() < self.epsilon:
            a = int(self.rng.integers(NUM_ACTIONS))
        return _action(a)


class BFSPolicy(_Navigator):
    """Shortest paths to random target cells; a new target on arrival (``targets`` records them)."""

    def __init__(self, env: Any, rng: np.random.Generator, epsilon: float = 0.1) -> None:
        super().__init__(env, rng, epsilon)
        self.target: tuple[int, int] | None = None
        self.targets: list[tuple[int, int]] = []

    def _new_target(self, state: np.ndarray) -> None:
        cells = self.env.free_cells()
        here = (int(state[0]), int(state[1]))
        while True:
            cell = tuple(int(v) for v in cells[self.rng.integers(len(cells))])
            if cell != here:
                self.target = cell  # type: ignore[assignment]
                self.targets.append(cell)  # type: ignore[arg-type]
                return

    def plan(self, state: np.ndarray) -> int:
        for _ in range(2):
            if self.target is None:
                self._new_target(state)
            a = next_action(self.env.blocked, state, self.target)
            if a is not None:
                return a
            self.target = None  # arrived (or unreachable): pick another
        return RIGHT


class TwoRoomsBFSPolicy(BFSPolicy):
    """:class:`BFSPolicy`, only in the two-rooms layout (the ``two_rooms_bfs`` preset)."""

    def __init__(self, env: Any, rng: np.random.Generator, epsilon: float = 0.1) -> None:
        if getattr(env, "layout", None) != "two_rooms":
            raise ValueError(
                f"two_rooms_bfs needs env kwarg layout=two_rooms, the env has layout={getattr(env, 'layout', None)!r}"
            )
        super().__init__(env, rng, epsilon)


def room_centres(layout: str) -> list[tuple[int, int]]:
    lo, hi = MID // 2, MID + (SIZE - 1 - MID) // 2  # 4 and 12 on the 17-cell grid
    if layout == "two_rooms":
        return [(lo, MID), (hi, MID)]
    return [(lo, lo), (hi, lo), (hi, hi), (lo, hi)]  # clockwise


class ExplorePolicy(_Navigator):
    """Visit each room's centre in turn (clockwise from the nearest) and look around (four right turns).

    A centre blocked by an object is replaced by the nearest reachable cell.
    """

    def __init__(self, env: Any, rng: np.random.Generator, epsilon: float = 0.1) -> None:
        super().__init__(env, rng, epsilon)
        self.centres = [self._reachable(c) for c in room_centres(env.layout)]
        self.room: int | None = None
        self.turns_left = 0

    def _reachable(self, cell: tuple[int, int]) -> tuple[int, int]:
        blocked = self.env.blocked
        if not blocked[cell]:
            return cell
        free = np.argwhere(~blocked)
        return tuple(int(v) for v in free[np.abs(free - np.array(cell)).sum(axis=1).argmin()])  # type: ignore[return-value]

    def plan(self, state: np.ndarray) -> int:
        if self.room is None:
            dist = bfs_distances(self.env.blocked, (int(state[0]), int(state[1])))
            self.room = int(np.argmin([dist[c] if dist[c] >= 0 else 10**6 for c in self.centres]))
        if self.turns_left > 0:
            self.turns_left -= 1
            if self.turns_left == 0:
                self.room = (self.room + 1) % len(self.centres)
            return RIGHT
        a = next_action(self.env.blocked, state, self.centres[self.room])
        if a is None:  # at the centre: look around, then head for the next room
            self.turns_left = 3
            return RIGHT
        return a


POLICIES: dict[str, type] = {
    "four_rooms_random": RandomDiscretePolicy,
    "four_rooms_explore": ExplorePolicy,
    "four_rooms_bfs": BFSPolicy,
    "two_rooms_bfs": TwoRoomsBFSPolicy,
}

"""four_rooms: a partially observable MiniGrid four-rooms world for memory tasks (docs/memory.md).

A 17 x 17 grid (outer walls on rows/columns 0 and 16) split by walls on column 8 and row 8 into four 7 x 7
rooms; each of the four internal wall segments has one gap (a "door"). Coloured objects (ball / box / key)
stand on free cells and block movement. ``layout="two_rooms"`` keeps only the column-8 wall (one door).

* state = proprio = ``[x, y, dir]`` (MiniGrid's ``dir``: 0 = +x, 1 = +y, 2 = -x, 3 = -y);
* actions: ``Discrete(3)``: 0 = turn left, 1 = turn right, 2 = forward (blocked by walls and objects);
  stored in datasets as the index, shape (T, 1) int64; the model sees its one-hot (see
  :class:`dinowm_core.data.normalization.Normalizer`);
* the observation is **partial**: MiniGrid's egocentric agent view (``agent_view_size`` tiles, 7 by default,
  with ``see_through_walls=False``), cells out of sight drawn black, resized to ``img_size`` px;
  :meth:`FourRoomsEnv.render_full` draws the whole grid top-down for videos only;
* success: the agent stands on the goal cell (the goal's direction only fixes the goal *image*);
  ``distance`` is the shortest-path length in cells around walls and objects;
* ``env_params`` = the layout (``doors``, ``objects``), JSON lists, so an episode replays exactly; by default
  the layout is drawn once from ``layout_seed``; ``randomize_layout=True`` draws a new one at every reset
  that is not given a state.

Deviations from the memory variant (docs/memory.md): its observation was the full top-down map (no task needed
memory); its goal cell was a drawn tile. Here the goal is a cell and a goal *image* (the view from that cell),
not part of the world, so observations never depend on the goal.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from typing import Any

import numpy as np
from gymnasium import spaces

from dinowm_core.envs.base import PlanningEnv
from dinowm_core.envs.wall import resize_matrix

SIZE = 17
MID = SIZE // 2
LEFT, RIGHT, FORWARD = 0, 1, 2
NUM_ACTIONS = 3
DIR_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))  # MiniGrid's DIR_TO_VEC
OBJECT_TYPES = ("ball", "box", "key")
DEFAULT_COLORS = ("red", "green", "blue", "purple", "yellow")
LAYOUTS = ("four_rooms", "two_rooms")


# ---- layouts ----------------------------------------------------------------------------------------
def wall_segments(layout: str) -> list[list[tuple[int, int]]]:
    """The internal wall segments of ``layout``, each a list of cells; each gets one door."""
    if layout == "two_rooms":
        return [[(MID, y) for y in range(1, SIZE - 1)]]
    return [
        [(MID, y) for y in range(1, MID)],
        [(MID, y) for y in range(MID + 1, SIZE - 1)],
        [(x, MID) for x in range(1, MID)],
        [(x, MID) for x in range(MID + 1, SIZE - 1)],
    ]


def wall_grid(layout: str, doors: list[list[int]]) -> np.ndarray:
    """(SIZE, SIZE) bool indexed [x, y]: outer walls and internal walls minus the doors."""
    walls = np.zeros((SIZE, SIZE), bool)
    walls[[0, -1], :] = True
    walls[:, [0, -1]] = True
    walls[MID, :] = True
    if layout == "four_rooms":
        walls[:, MID] = True
    for x, y in doors:
        walls[x, y] = False
    return walls


def room_of(x: int, y: int, layout: str) -> int:
    """Room index of a free cell (doors belong to no room: -1)."""
    if x == MID or (layout == "four_rooms" and y == MID):
        return -1
    return int(x > MID) + (2 * int(y > MID) if layout == "four_rooms" else 0)


def bfs_distances(blocked: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Shortest 4-neighbour path lengths (in cells) from ``start`` over cells not ``blocked``; -1 = unreachable."""
    dist = np.full(blocked.shape, -1, np.int64)
    dist[start] = 0
    queue = deque([start])
    while queue:
        x, y = queue.popleft()
        for dx, dy in DIR_VEC:
            nx, ny = x + dx, y + dy
            if not blocked[nx, ny] and dist[nx, ny] < 0:
                dist[nx, ny] = dist[x, y] + 1
                queue.append((nx, ny))
    return dist


def random_layout(
    rng: np.random.Generator, layout: str, num_objects: int, colors: tuple[str, ...], types: tuple[str, ...]
) -> dict[str, Any]:
    """Doors (one random cell per wall segment, not at a segment's ends) and objects on free cells that are
    not next to a door; redrawn until every free cell is reachable from every other."""
    for _ in range(100):
        doors = [list(seg[int(rng.integers(1, len(seg) - 1))]) for seg in wall_segments(layout)]
        walls = wall_grid(layout, doors)
        near_door = {(x + dx, y + dy) for x, y in doors for dx, dy in ((0, 0), *DIR_VEC)}
        free = [
            (x, y) for x in range(SIZE) for y in range(SIZE) if not walls[x, y] and (x, y) not in near_door
        ]
        picks = rng.choice(len(free), size=num_objects, replace=False)
        objects = [
            [str(types[rng.integers(len(types))]), str(colors[rng.integers(len(colors))]), *map(int, free[i])]
            for i in picks
        ]
        params = {"doors": doors, "objects": objects}
        blocked = blocked_grid(layout, params)
        open_cells = np.argwhere(~blocked)
        if (bfs_distances(blocked, tuple(open_cells[0]))[~blocked] >= 0).all():
            return params
    raise RuntimeError("four_rooms: no connected layout in 100 draws (too many objects?)")


def blocked_grid(layout: str, params: dict[str, Any]) -> np.ndarray:
    """(SIZE, SIZE) bool [x, y]: walls and objects (the cells the agent cannot enter)."""
    blocked = wall_grid(layout, params["doors"])
    for _, _, x, y in params["objects"]:
        blocked[x, y] = True
    return blocked


def turn_towards(direction: int, dx: int, dy: int) -> int:
    """The action that moves an agent facing ``direction`` towards the neighbour cell ``(+dx, +dy)``."""
    want = DIR_VEC.index((dx, dy))
    if want == direction:
        return FORWARD
    return RIGHT if (want - direction) % 4 in (1, 2) else LEFT


# ---- MiniGrid glue ----------------------------------------------------------------------------------
def _make_sim(agent_view_size: int) -> Any:
    """A bare MiniGrid env used for its grid, field-of-view and tile rendering (never reset or stepped)."""
    from minigrid.core.mission import MissionSpace
    from minigrid.minigrid_env import MiniGridEnv

    return MiniGridEnv(
        mission_space=MissionSpace(mission_func=lambda: "four rooms"),
        grid_size=SIZE,
        max_steps=10**9,
        see_through_walls=False,
        agent_view_size=agent_view_size,
        render_mode=None,
    )


def _build_grid(layout: str, params: dict[str, Any]) -> Any:
    from minigrid.core.grid import Grid
    from minigrid.core.world_object import Ball, Box, Key, Wall

    kinds = {"ball": Ball, "box": Box, "key": Key}
    grid = Grid(SIZE, SIZE)
    walls = wall_grid(layout, params["doors"])
    for x, y in np.argwhere(walls):
        grid.set(int(x), int(y), Wall())
    for kind, color, x, y in params["objects"]:
        grid.set(int(x), int(y), kinds[kind](color))
    return grid


@lru_cache(maxsize=8)
def _resize_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The nonzero taps of :func:`~dinowm_core.envs.wall.resize_matrix`: indices and weights (n_out, k)."""
    w = resize_matrix(n_in, n_out)
    k = int((w > 0).sum(axis=1).max())
    idx = np.argsort(w <= 0, axis=1, kind="stable")[:, :k]  # the nonzero columns first, in order
    return idx, np.take_along_axis(w, idx, axis=1)


def resize_view(frame: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize (as ``wall.resize_frame``) of an (n, n, 3) uint8 frame, without BLAS: a
    gather over the few taps per pixel. Why: BLAS threads on a busy 2-core machine made the two small matrix
    products 30x slower than the render itself."""
    if frame.shape[0] == size:
        return frame
    idx, w = _resize_taps(frame.shape[0], size)
    x = frame.astype(np.float32)
    x = (x[idx] * w[:, :, None, None]).sum(axis=1)  # rows: (size, n, 3)
    x = (x[:, idx] * w[None, :, :, None]).sum(axis=2)  # columns: (size, size, 3)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def _tile_size(view: int, img_size: int) -> int:
    """Smallest tile size whose view render covers ``img_size`` px (then resized down, antialiased)."""
    return max(1, -(-img_size // view))


# ---- the env ----------------------------------------------------------------------------------------
class FourRoomsEnv(PlanningEnv):
    """MiniGrid four rooms with a partial (agent-view) observation; see the module docstring."""

    env_name = "four_rooms"
    state_dim = 3
    proprio_dim = 3
    action_dim = 1  # the stored action is the index of one of ``num_actions``
    num_actions = NUM_ACTIONS

    def __init__(
        self,
        img_size: int = 64,
        *,
        layout: str = "four_rooms",
        num_objects: int = 4,
        colors: tuple[str, ...] | list[str] = DEFAULT_COLORS,
        object_types: tuple[str, ...] | list[str] = OBJECT_TYPES,
        layout_seed: int = 0,
        randomize_layout: bool = False,
        agent_view_size: int = 7,
        render_mode: str | None = "rgb_array",
    ) -> None:
        from minigrid.core.constants import COLOR_NAMES

        if layout not in LAYOUTS:
            raise ValueError(f"four_rooms: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if not 0 <= num_objects <= 40:
            raise ValueError(f"four_rooms: num_objects must be in [0, 40], got {num_objects}")
        bad = [c for c in colors if c not in COLOR_NAMES] + [t for t in object_types if t not in OBJECT_TYPES]
        if bad or not colors or not object_types:
            raise ValueError(
                f"four_rooms: unknown or missing colors/object_types {bad} (colors: {', '.join(COLOR_NAMES)}; "
                f"types: {', '.join(OBJECT_TYPES)})"
            )
        if agent_view_size < 3 or agent_view_size % 2 == 0:
            raise ValueError(f"four_rooms: agent_view_size must be odd and >= 3, got {agent_view_size}")
        super().__init__(img_size=img_size, render_mode=render_mode)
        self.observation_space["proprio"] = spaces.Box(
            np.zeros(3, np.float32), np.array([SIZE - 1, SIZE - 1, 3], np.float32), dtype=np.float32
        )
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self.layout, self.num_objects = layout, int(num_objects)
        self.colors, self.object_types = tuple(colors), tuple(object_types)
        self.randomize_layout = bool(randomize_layout)
        self.sim = _make_sim(agent_view_size)
        self.set_env_params(self._draw_layout(np.random.default_rng(layout_seed)))
        self._set_state(self._random_free_state(np.random.default_rng(layout_seed)))

    # ---- layout ---------------------------------------------------------------------------------
    def _draw_layout(self, rng: np.random.Generator) -> dict[str, Any]:
        return random_layout(rng, self.layout, self.num_objects, self.colors, self.object_types)

    @property
    def env_params(self) -> dict[str, Any]:
        return {
            "doors": [list(d) for d in self._params["doors"]],
            "objects": [list(o) for o in self._params["objects"]],
        }

    def set_env_params(self, params: dict[str, Any]) -> None:
        if not params:
            return
        unknown = set(params) - {"doors", "objects"}
        if unknown or set(params) != {"doors", "objects"}:
            raise ValueError(f"four_rooms: env params must be exactly doors, objects; got {sorted(params)}")
        doors = [[int(x), int(y)] for x, y in params["doors"]]
        segments = wall_segments(self.layout)
        if len(doors) != len(segments) or any(
            tuple(d) not in seg for d, seg in zip(doors, segments, strict=True)
        ):
            raise ValueError(
                f"four_rooms: doors {doors} must be one cell on each internal wall of {self.layout}"
            )
        walls = wall_grid(self.layout, doors)
        objects = []
        for obj in params["objects"]:
            kind, color, x, y = obj
            if kind not in OBJECT_TYPES or walls[int(x), int(y)]:
                raise ValueError(f"four_rooms: bad object {obj} (type in {OBJECT_TYPES}, on a free cell)")
            objects.append([str(kind), str(color), int(x), int(y)])
        self._params = {"doors": doors, "objects": objects}
        self.blocked = blocked_grid(self.layout, self._params)
        self.sim.grid = _build_grid(self.layout, self._params)

    def free_cells(self) -> np.ndarray:
        """(n, 2) [x, y] of the cells the agent may stand on."""
        return np.argwhere(~self.blocked)

    # ---- state ----------------------------------------------------------------------------------
    def _set_state(self, state: np.ndarray) -> None:
        x, y, d = (float(v) for v in state)
        if not (x.is_integer() and y.is_integer() and d.is_integer()) or not 0 <= d <= 3:
            raise ValueError(f"four_rooms: state must be whole [x, y, dir in 0..3], got {list(state)}")
        x, y = int(x), int(y)
        if not (0 <= x < SIZE and 0 <= y < SIZE) or self.blocked[x, y]:
            raise ValueError(f"four_rooms: cell ({x}, {y}) is a wall, an object or outside the grid")
        self.sim.agent_pos, self.sim.agent_dir = (x, y), int(d)

    def get_state(self) -> np.ndarray:
        return np.array([*self.sim.agent_pos, self.sim.agent_dir], np.float64)

    def get_proprio(self) -> np.ndarray:
        return self.get_state()

    def _random_free_state(self, rng: np.random.Generator) -> np.ndarray:
        cells = self.free_cells()
        x, y = cells[rng.integers(len(cells))]
        return np.array([x, y, rng.integers(4)], np.float64)

    def _random_state(self) -> np.ndarray:
        if self.randomize_layout:
            self.set_env_params(self._draw_layout(self.np_random))
        return self._random_free_state(self.np_random)

    @staticmethod
    def action_index(action: Any) -> int:
        """An int, a numpy scalar or a (1,) array holding a whole number in 0..2 -> the action index."""
        a = np.asarray(action).reshape(-1)
        if a.size != 1 or not float(a[0]).is_integer() or not 0 <= int(a[0]) < NUM_ACTIONS:
            raise ValueError(f"four_rooms: an action is one index in 0..{NUM_ACTIONS - 1}, got {action!r}")
        return int(a[0])

    def _step_dynamics(self, action: Any) -> dict[str, Any]:
        a = self.action_index(action)
        (x, y), d = self.sim.agent_pos, self.sim.agent_dir
        if a == LEFT:
            self.sim.agent_dir = (d - 1) % 4
        elif a == RIGHT:
            self.sim.agent_dir = (d + 1) % 4
        else:
            nx, ny = x + DIR_VEC[d][0], y + DIR_VEC[d][1]
            if not self.blocked[nx, ny]:
                self.sim.agent_pos = (nx, ny)
        return {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Like the base step, but the action is an index (int, numpy integer, or a (1,) array of a whole
        number: the evaluation and datasets pass float rows)."""
        self._step_dynamics(action)
        return self._obs(), 0.0, False, False, {"state": self.get_state()}

    # ---- observation, evaluation ----------------------------------------------------------------
    def render(self) -> np.ndarray:
        """The agent's view: (img_size, img_size, 3) uint8; cells out of sight are black."""
        view = self.sim.agent_view_size
        grid, visible = self.sim.gen_obs_grid()
        for i, j in np.argwhere(~visible):
            grid.set(int(i), int(j), None)  # hide what the agent cannot see (MiniGrid draws it unhighlighted)
        frame = grid.render(
            _tile_size(view, self.img_size),
            agent_pos=(view // 2, view - 1),
            agent_dir=3,
            highlight_mask=visible,
        )
        return resize_view(frame, self.img_size)

    def render_full(self, tile_size: int = 16, goal: np.ndarray | None = None) -> np.ndarray:
        """Top-down frame (17 * tile_size px) of the whole grid, the agent's field of view highlighted and, with
        ``goal`` (a state), the goal cell outlined in green: for videos only, never an observation."""
        frame = self.sim.get_full_render(highlight=True, tile_size=tile_size)
        if goal is not None:
            x, y, b = int(goal[0]) * tile_size, int(goal[1]) * tile_size, max(1, tile_size // 8)
            cell = frame[y : y + tile_size, x : x + tile_size]
            for edge in (cell[:b], cell[-b:], cell[:, :b], cell[:, -b:]):
                edge[...] = (0, 255, 0)
        return frame

    def path_length(self, start: np.ndarray, goal: np.ndarray) -> int:
        """Shortest path length in cells between two states' cells (-1 if unreachable)."""
        dist = bfs_distances(self.blocked, (int(start[0]), int(start[1])))
        return int(dist[int(goal[0]), int(goal[1])])

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        goal_state, state = np.asarray(goal_state), np.asarray(state)
        success = bool(goal_state[0] == state[0] and goal_state[1] == state[1])
        return {"success": success, "distance": float(self.path_length(state, goal_state))}

    def reward(self, state: np.ndarray) -> float:
        return 0.0

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and goal on free cells of different rooms (random directions), in the current layout."""
        rng = np.random.default_rng(seed)
        init = self._random_free_state(rng)
        start_room = room_of(int(init[0]), int(init[1]), self.layout)
        while True:
            goal = self._random_free_state(rng)
            room = room_of(int(goal[0]), int(goal[1]), self.layout)
            if room >= 0 and room != start_room:
                return init, goal

"""Memory-Maze (Pasukonis et al., 2022): first-person navigation in a 3-D maze on dm_control.

Needs the optional extra ``memory_maze`` (``pip install -e '.[memory_maze]'``); this module imports the package
only when an env is built, so ``import dinowm_core.envs`` works without it.

The scene is the package's own: its rolling-ball walker (``RollingBallWithFriction``), its task
(``MemoryMazeTask``: coloured target spheres, the current target picked at random, a new one on touch), its
maze arena and textures, 4 Hz control (50 physics substeps of 5 ms), 64 px egocentric camera, and its six
discrete actions (:data:`ACTIONS`). What we change is how the maze is chosen and how state is set:

* **Layouts are strings** (:data:`FIXED_LAYOUTS`, ``*`` wall, space floor, ``P`` spawn cell, ``G`` target
  cell). Every layout goes through one arena, :class:`FixedLayoutArena` (the package's arena fed a
  ``labmaze.FixedMazeWithRandomGoals``). ``9x9`` is the package's random 9 x 9 task: one layout per
  ``maze_seed`` from ``labmaze.RandomMaze`` with the package's 9 x 9 parameters (6 rooms of 3-5 cells,
  3 targets), so ``env_params = {"maze_seed": s}`` rebuilds an episode's maze. The fixed layouts
  (``3x7`` two rooms, ``7x7`` four rooms, ``7x19`` a row of four rooms) have ``env_params = {}``; their wall
  textures, target colours and target cells are drawn once from a fixed seed.
* **Reset to a state teleports the walker** (joint positions and velocities, then ``mj_forward``) and sets
  the current target; the MJCF is recompiled only when the maze changes (a 9 x 9 reset with a new seed
  costs ~1 s, a teleport ~1 ms).
* The solver warm start is disabled, so the next state is a function of (state, action) alone and a reset
  to a recorded state replays the rest of its trajectory exactly. The task's RNG (it picks the next target
  when one is touched) is reseeded from the reset state at every reset, for the same reason.
* Frames come from our :class:`~dinowm_core.envs.mujoco_render.OffscreenRenderer` of the walker's
  egocentric camera (no shadows, reflections or skybox: 10-20x cheaper on Mesa) plus the package's
  target-colour border (2 px at 64 px) unless ``target_border=False``.

State (float64, 11): ``[root_x, root_y, root_z, steer, roll]`` joint positions (world metres, radians), the
same five velocities, and the current target index. Proprio (4): position in grid cells (the package's
``agent_pos``: inner maze from (0, 0) bottom-left to (width, height)) and the heading as a unit vector
``(dx, dy)`` (the package's ``agent_dir``; ``= (cos(-steer), sin(-steer))``). Success: the agent within
0.5 grid cells (1 m) of the goal state's position; ``sample_init_goal`` puts the goal on the current target.
Actions are integer indices in ``[0, 6)``, stored as int64 ``(T, 1)``.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import numpy as np
from gymnasium import spaces

from dinowm_core.envs.base import PlanningEnv
from dinowm_core.envs.memory_maze_scene import (
    FIXED_LAYOUTS,
    LAYOUTS,
    RANDOM_LAYOUTS,
    XY_SCALE,
    build_arena_class,
    check_layout,
    fast_target_class,
    import_package,
    random_layout,
    vary_walls,
)
from dinowm_core.envs.mujoco_render import OffscreenRenderer, mujoco

#: the package's discrete action set: (roll, steer) controls; roll -1 rolls forward, steer -1 turns left
ACTIONS = np.array(
    [[0.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [-1.0, -1.0], [-1.0, 1.0]], dtype=np.float64
)
ACTION_NAMES = ("noop", "forward", "left", "right", "forward_left", "forward_right")
CONTROL_TIMESTEP = 0.25  # 4 Hz, the package's DEFAULT_CONTROL_FREQ
SUCCESS_THRESHOLD = 0.5  # grid cells
TARGET_RADIUS = 0.6  # the package's target spheres, half sunk into the floor (height above ground -0.6)
LAYOUT_SEED = 0  # textures, target colours and cells of the fixed layouts
NUM_JOINTS = 5  # root_x, root_y, root_z (slides), steer, roll (hinges)
TARGET_INDEX = 2 * NUM_JOINTS


class MemoryMazeEnv(PlanningEnv):
    """Memory-Maze navigation; ``layout`` is ``9x9`` (a random maze per ``maze_seed``) or a fixed layout."""

    env_name = "memory_maze"
    state_dim = 2 * NUM_JOINTS + 1
    proprio_dim = 4
    action_dim = 1
    num_actions = len(ACTIONS)

    def __init__(
        self,
        img_size: int = 64,
        render_mode: str | None = "rgb_array",
        layout: str = "9x9",
        target_border: bool = True,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"memory_maze: unknown layout {layout!r} (choices: {', '.join(LAYOUTS)})")
        super().__init__(img_size=img_size, render_mode=render_mode)
        self._pkg = import_package()
        self.layout, self.target_border = layout, bool(target_border)
        self.action_space = spaces.Discrete(self.num_actions)
        self._random = RANDOM_LAYOUTS.get(layout)
        if self._random is None:
            rows = FIXED_LAYOUTS[layout]
            self.num_targets = "".join(rows).count("G")
        else:
            size = self._random["size"]
            rows = ("*" * (size + 2),) * (size + 2)  # replaced by the first maze; fixes the arena size
            self.num_targets = self._random["num_targets"]
        self.maze_size = check_layout(rows)
        self.maze_seed: int | None = None
        self._maze_pinned = False
        self._renderer: OffscreenRenderer | None = None
        self._build_task(rows)
        if self._random is None:
            self._compile(vary_walls(rows), None, LAYOUT_SEED)

    # ---- scene ----------------------------------------------------------------------------------
    def _build_task(self, rows: tuple[str, ...]) -> None:
        mm, composer = self._pkg.maze, self._pkg.composer
        walker = mm.RollingBallWithFriction(camera_height=0.3, add_ears=False)
        wall_textures = {"*": mm.FixedWallTexture("style_01", "yellow")}
        wall_textures.update({str(i): self._pkg.textures.WallTextures("style_01") for i in range(10)})
        self._arena = build_arena_class(self._pkg)(
            rows=rows,
            floor_textures=mm.FixedFloorTexture("style_01", ["blue", "blue_bright"]),
            wall_textures=wall_textures,
            skybox_texture=None,
        )
        self._task = mm.MemoryMazeTask(
            walker=walker, maze_arena=self._arena, n_targets=self.num_targets, target_radius=TARGET_RADIUS,
            target_height_above_ground=-TARGET_RADIUS, enable_global_task_observables=False,
            control_timestep=CONTROL_TIMESTEP, camera_resolution=self.img_size,
        )  # fmt: skip
        # We render the camera ourselves; observables would render (and compute) every step for nothing.
        for observable in self._task.observables.values():
            observable.enabled = False
        # The task builds its targets itself (and again when it recolours them, which we never ask for): swap in
        # the vectorized touch test on the instances it made.
        fast_target = fast_target_class(self._pkg)
        for target in self._task._targets:
            target.__class__ = fast_target
        self._walker = walker
        self._env = composer.Environment(task=self._task, random_state=np.random.RandomState(LAYOUT_SEED))

    def _compile(self, rows: tuple[str, ...], variations: tuple[str, ...] | None, seed: int) -> None:
        """Put the maze ``rows`` in the arena and recompile; textures, target cells and colours follow ``seed``."""
        self._arena.set_layout(rows, variations)
        self._env.random_state.seed(seed)
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        # dm_control warns on every reset that the rolling ball has no free joint to give a spawn velocity to.
        absl_log.setLevel(logging.ERROR)
        try:
            self._env.reset()
        finally:
            absl_log.setLevel(level)
        physics = self._env.physics
        physics.model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_WARMSTART
        joints = [self._walker.mjcf_model.find("joint", n) for n in ("steer", "roll")]
        ids = [physics.bind(j).element_id for j in [*self._walker._root_joints, *joints]]
        self._qpos_idx = physics.model.jnt_qposadr[ids]
        self._qvel_idx = physics.model.jnt_dofadr[ids]
        self._free_cells = [
            (i, j) for i, row in enumerate(rows) for j, c in enumerate(row) if c in " PG"
        ]  # fmt: skip
        if self._renderer is not None:
            self._renderer.close()
        self._renderer = None

    def _set_maze_seed(self, seed: int) -> None:
        if seed == self.maze_seed:
            return
        entity, variations = random_layout(seed, self._random["size"], self.num_targets,
                                           **{k: v for k, v in self._random.items()
                                              if k in ("max_rooms", "room_min_size", "room_max_size")})  # fmt: skip
        self._compile(vary_walls(entity), variations, seed)
        self.maze_seed = int(seed)

    @property
    def physics(self) -> Any:
        """The dm_control physics (built on first use for the random layout)."""
        if self._random is not None and self.maze_seed is None:
            self._set_maze_seed(0)
        return self._env.physics

    @property
    def env_params(self) -> dict[str, Any]:
        """``{"maze_seed": s}`` for the random layout once a maze is built; ``{}`` otherwise. A reset given
        ``{}`` (or none) on the random layout draws a new maze from the reset's RNG."""
        return {} if self._random is None or self.maze_seed is None else {"maze_seed": self.maze_seed}

    def set_env_params(self, params: dict[str, Any]) -> None:
        unknown = set(params) - ({"maze_seed"} if self._random is not None else set())
        if unknown:
            known = "maze_seed" if self._random is not None else f"none for layout {self.layout}"
            raise ValueError(f"memory_maze: unknown env params {sorted(unknown)} (known: {known})")
        if "maze_seed" in params and params["maze_seed"] is not None:
            seed = params["maze_seed"]
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
                raise ValueError(f"memory_maze: maze_seed must be a non-negative integer, got {seed!r}")
            self._set_maze_seed(int(seed))
            self._maze_pinned = True

    # ---- coordinates ----------------------------------------------------------------------------
    def cell_to_world(self, i: int, j: int) -> np.ndarray:
        """World (x, y) of the centre of layout cell (row ``i``, column ``j``), outer walls included."""
        return np.array(self._arena.grid_to_world_positions([(i, j)])[0][:2])

    def world_to_grid(self, xy: np.ndarray) -> np.ndarray:
        """World metres -> the package's grid cells (inner maze, bottom-left origin)."""
        rows, cols = self.maze_size
        return np.asarray(xy, np.float64) / XY_SCALE + np.array([cols, rows]) / 2.0

    @property
    def target_positions(self) -> np.ndarray:
        """World (x, y) of the target spheres, (num_targets, 2)."""
        physics = self.physics
        return np.stack([physics.bind(t.geom).xpos[:2] for t in self._task._targets]).astype(np.float64)

    # ---- PlanningEnv hooks ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # noqa: ANN201
        self._maze_pinned = False
        return super().reset(seed=seed, options=options)

    def _set_state(self, state: np.ndarray) -> None:
        target = state[TARGET_INDEX]
        if target != int(target) or not 0 <= target < self.num_targets:
            raise ValueError(
                f"memory_maze: target index must be an integer in [0, {self.num_targets}), got {target}"
            )
        physics = self.physics
        model, data = physics.model.ptr, physics.data.ptr
        mujoco.mj_resetData(model, data)
        data.qpos[self._qpos_idx] = state[:NUM_JOINTS]
        data.qvel[self._qvel_idx] = state[NUM_JOINTS:TARGET_INDEX]
        mujoco.mj_forward(model, data)
        for t in self._task._targets:
            t.reset(physics)
        self._task._current_target_ix = int(target)
        self._task._rewarded_this_step = False
        # The task draws the next target from this RNG when one is touched: a function of the state.
        self._env.random_state.seed(zlib.crc32(np.ascontiguousarray(state, np.float64).tobytes()))

    def _random_state(self) -> np.ndarray:
        if self._random is not None and not self._maze_pinned:
            self._set_maze_seed(int(self.np_random.integers(2**31)))
        return self._sample_pose(self.np_random, int(self.np_random.integers(self.num_targets)))

    def _sample_pose(self, rng: np.random.Generator, target: int) -> np.ndarray:
        """At rest in a random free cell (uniform within +-0.25 cells of its centre), random heading."""
        self.physics  # noqa: B018  (builds the maze on first use)
        i, j = self._free_cells[int(rng.integers(len(self._free_cells)))]
        xy = self.cell_to_world(i, j) + rng.uniform(-0.25, 0.25, 2) * XY_SCALE
        state = np.zeros(self.state_dim)
        state[:2] = xy
        state[3] = rng.uniform(-math.pi, math.pi)
        state[TARGET_INDEX] = target
        return state

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        timestep = self._env.step(ACTIONS[int(action[0])])
        return {"target_reached": bool(timestep.reward), "target_index": int(self._task._current_target_ix)}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.asarray(action).reshape(-1)
        if a.shape != (1,) or a[0] != int(a[0]) or not 0 <= a[0] < self.num_actions:
            raise ValueError(
                f"memory_maze: an action is one integer in [0, {self.num_actions}), got {action!r}"
            )
        extra = self._step_dynamics(a.astype(np.int64))
        state = self.get_state()
        reward = 1.0 if extra["target_reached"] else 0.0
        return self._obs(), reward, False, False, {"state": state, **extra}

    def get_state(self) -> np.ndarray:
        data = self.physics.data.ptr
        return np.concatenate(
            [data.qpos[self._qpos_idx], data.qvel[self._qvel_idx], [self._task._current_target_ix]]
        ).astype(np.float64)

    def get_proprio(self) -> np.ndarray:
        state = self.get_state()
        heading = -state[3]
        return np.array([*self.world_to_grid(state[:2]), math.cos(heading), math.sin(heading)])

    def render(self) -> np.ndarray:
        physics = self.physics
        if self._renderer is None:
            self._renderer = OffscreenRenderer(physics.model.ptr, self.img_size, camera="walker/egocentric")
        frame = self._renderer.render(physics.data.ptr)
        if self.target_border:
            # The package's TargetColorAsBorderWrapper: the current target's colour, 70% bright.
            b = int(2 * math.sqrt(self.img_size // 64))
            color = (self._task._target_colors[self._task._current_target_ix] * 255 * 0.7).astype(np.uint8)
            if b > 0:
                frame[:, :b] = frame[:, -b:] = frame[:b, :] = frame[-b:, :] = color
        return frame

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        goal_state, state = np.asarray(goal_state, np.float64), np.asarray(state, np.float64)
        distance = float(np.linalg.norm(goal_state[:2] - state[:2])) / XY_SCALE
        return {
            "success": distance < SUCCESS_THRESHOLD,
            "distance": distance,
            "state_dist": float(np.linalg.norm(goal_state[:TARGET_INDEX] - state[:TARGET_INDEX])),
        }

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A random start pose and, as the goal, a pose on the current target (same maze, same target)."""
        rng = np.random.default_rng(seed)
        target = int(rng.integers(self.num_targets))
        init = self._sample_pose(rng, target)
        goal = np.zeros(self.state_dim)
        goal[:2] = self.target_positions[target]
        goal[3] = rng.uniform(-math.pi, math.pi)
        goal[TARGET_INDEX] = target
        return init, goal

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()

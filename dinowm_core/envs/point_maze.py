"""PointMaze: the D4RL maze2d U-maze used by DINO-WM, as our own MJCF (reference section 6.3).

A point mass (two slide joints, motors with gear 100) moves in a 5 x 5 grid of 1 x 1 wall boxes laid out as
``U_MAZE``. Physics and coordinates follow the reference exactly so that its success threshold (0.5) and
its init/goal sampler region hold:

* timestep 0.01 s, Euler, zero gravity, 20 solver iterations; joint damping 1; geom friction 0.5,
  ``condim`` 1, margin 0.002; a sphere of radius 0.1 collides, a site of radius 0.2 is drawn;
* the wall at maze cell ``(w, h)`` (row ``w`` of the layout string, column ``h``) is centred at world
  ``(w + 1, h + 1)``; the particle body sits at world ``(1.2, 1.2)``, so the state ``(x, y)`` = ``qpos`` is
  world position minus 1.2. Layout rows run along x, columns along y. The ball centre (radius 0.1) can
  reach x, y in [0.4, 3.2]: any y in the arms ``x <= 1.2`` (row ``#GOO#``) and ``x >= 2.4`` (row ``#OOO#``),
  only ``y >= 2.4`` in between (row ``###O#``). The reference sampler keeps a 0.1 margin inside this U.
* one env step = ``frame_skip`` 5 physics steps (0.05 s): clip the action to [-1, 1], clip ``qvel`` to
  +-5 *before* simulating (as D4RL's ``clip_velocity``), so a state after a step may exceed 5;
* state = proprio = ``[x, y, vx, vy]``; success is ``||goal[:2] - cur[:2]|| < 0.5``.

Deliberate differences from the reference:

* No target marker. The reference parks it off-screen every step (its target logic is dead code,
  reference section 7, bug 9), so frames never show it; we leave it out of the model.
* The frame is rendered after an ``mj_forward``, so it shows the state returned in ``info["state"]``;
  mujoco-py rendered right after ``mj_step`` and so drew the pose one 0.01 s substep earlier.
* A fixed top-down camera (image right = +x, up = +y, as the reference's azimuth 90 / elevation -90 free
  camera) framing the whole 5 x 5 maze, instead of MuJoCo's default free-camera distance. No image flip.
* The solver warm start is disabled, so the next state is a function of (state, action) alone and resetting
  to any recorded state replays the rest of its trajectory bit-exactly (with warm start, a reset state
  differs from the recorded one in the solver's starting point: ~1e-16 differences once in contact).
* The ground plane's render grid spacing is 10 instead of 0.25: same pixels, 3-5x faster at 64 px.
* The init/goal sampler's draw order (x, y until valid, then vx, vy; init before goal) is ours, so
  ``sample_init_goal(seed)`` does not reproduce the reference's pairs number for number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from dinowm_core.envs.base import PlanningEnv
from dinowm_core.envs.mujoco_render import OffscreenRenderer, mujoco

U_MAZE = ("#####", "#GOO#", "###O#", "#OOO#", "#####")
#: world position of the particle body; the state's (x, y) is relative to it
PARTICLE_ORIGIN = 1.2
PARTICLE_RADIUS = 0.1
SUCCESS_THRESHOLD = 0.5
MAX_QVEL = 5.0
#: velocity range of the reference's random states (its dataset's STATE_RANGES)
INIT_QVEL_RANGE = 5.2262554
#: the reference sampler's bounding box for x and y
SAMPLE_LOW, SAMPLE_HIGH = 0.5, 3.1
FRAME_SKIP = 5


def in_sampler_region(x: float, y: float) -> bool:
    """The reference sampler's U-shaped region (0.1 inside the reachable free space)."""
    if not (SAMPLE_LOW <= x <= SAMPLE_HIGH and SAMPLE_LOW <= y <= SAMPLE_HIGH):
        return False
    in_arm = x <= 1.1 or x >= 2.5
    return in_arm or y >= 2.5


def wall_cells(layout: tuple[str, ...] = U_MAZE) -> list[tuple[int, int]]:
    """``(w, h)`` indices of the wall tiles; the box for ``(w, h)`` is centred at world ``(w + 1, h + 1)``."""
    return [(w, h) for w, row in enumerate(layout) for h, tile in enumerate(row) if tile == "#"]


def maze_xml(layout: tuple[str, ...] = U_MAZE) -> str:
    """MJCF of the D4RL point maze (reference section 6.3) with a fixed top-down camera."""
    walls = "\n".join(
        f'    <geom name="wall_{w}_{h}" type="box" pos="{w + 1.0} {h + 1.0} 0" size="0.5 0.5 0.2" '
        'material="wall" conaffinity="1"/>'
        for w, h in wall_cells(layout)
    )
    centre_x, centre_y = (len(layout) + 1) / 2, (len(layout[0]) + 1) / 2
    # fovy 45 deg: a camera 6.5 above the ground sees +-2.69 around the centre, just wider than the maze.
    return f"""
<mujoco model="point_maze">
  <compiler inertiafromgeom="true" angle="radian" coordinate="local"/>
  <option timestep="0.01" gravity="0 0 0" iterations="20" integrator="Euler">
    <!-- no solver warm start: the next state is a function of (state, action) alone -->
    <flag warmstart="disable"/>
  </option>
  <default>
    <joint damping="1" limited="false"/>
    <geom friction=".5 .1 .1" density="1000" margin="0.002" condim="1" contype="2" conaffinity="1"/>
  </default>
  <asset>
    <texture type="2d" name="groundplane" builtin="checker" rgb1="0.2 0.3 0.4" rgb2="0.1 0.2 0.3"
             width="100" height="100"/>
    <material name="groundplane" texture="groundplane" texrepeat="20 20"/>
    <material name="wall" rgba=".7 .5 .3 1"/>
  </asset>
  <visual>
    <headlight ambient=".4 .4 .4" diffuse=".8 .8 .8" specular="0.1 0.1 0.1"/>
    <map znear=".01"/>
  </visual>
  <worldbody>
    <camera name="top" pos="{centre_x} {centre_y} 6.5" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <!-- the third size is the render grid spacing: D4RL's 0.25 draws 100k quads for identical pixels -->
    <geom name="ground" type="plane" size="40 40 10" pos="0 0 -0.1" contype="1" conaffinity="0"
          material="groundplane"/>
    <body name="particle" pos="{PARTICLE_ORIGIN} {PARTICLE_ORIGIN} 0">
      <geom name="particle_geom" type="sphere" size="{PARTICLE_RADIUS}" rgba="0 0 1 0" contype="1"/>
      <site name="particle_site" size="0.2" rgba="0.3 0.6 0.3 1"/>
      <joint name="ball_x" type="slide" axis="1 0 0"/>
      <joint name="ball_y" type="slide" axis="0 1 0"/>
    </body>
{walls}
  </worldbody>
  <actuator>
    <motor joint="ball_x" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
    <motor joint="ball_y" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
  </actuator>
</mujoco>
"""


def sample_free_state(rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    """``[x, y, vx, vy]``: rejection-sampled position in the U region, velocities ~ U(+-5.2262554)."""
    while True:
        x, y = rng.uniform(SAMPLE_LOW, SAMPLE_HIGH), rng.uniform(SAMPLE_LOW, SAMPLE_HIGH)
        if in_sampler_region(x, y):
            break
    vx, vy = rng.uniform(-INIT_QVEL_RANGE, INIT_QVEL_RANGE, size=2)
    return np.array([x, y, vx, vy], dtype=np.float64)


class PointMazeEnv(PlanningEnv):
    """D4RL U-maze point mass; actions are forces in [-1, 1]^2 (x gear 100), state ``[x, y, vx, vy]``."""

    env_name = "point_maze"
    state_dim = 4
    proprio_dim = 4
    action_dim = 2

    def __init__(self, img_size: int = 224, render_mode: str | None = "rgb_array") -> None:
        super().__init__(img_size=img_size, render_mode=render_mode)
        self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.model = mujoco.MjModel.from_xml_string(maze_xml())
        self.data = mujoco.MjData(self.model)
        self._renderer: OffscreenRenderer | None = None
        mujoco.mj_forward(self.model, self.data)

    # ---- PlanningEnv hooks ----------------------------------------------------------------------
    def _set_state(self, state: np.ndarray) -> None:
        # Resetting also zeroes the solver warm start, time and controls, so a replay is bit-exact.
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = state[:2]
        self.data.qvel[:] = state[2:4]
        mujoco.mj_forward(self.model, self.data)

    def _random_state(self) -> np.ndarray:
        return sample_free_state(self.np_random)

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        self.data.ctrl[:] = np.clip(action, -1.0, 1.0)
        # D4RL clips the velocity once per env step, before the substeps.
        np.clip(self.data.qvel, -MAX_QVEL, MAX_QVEL, out=self.data.qvel)
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        # mj_step leaves positions-derived quantities one substep stale; refresh them for rendering.
        mujoco.mj_forward(self.model, self.data)
        return {}

    def get_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def get_proprio(self) -> np.ndarray:
        return self.get_state()

    def render(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = OffscreenRenderer(self.model, self.img_size, camera="top")
        return self._renderer.render(self.data)

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        goal_state, state = np.asarray(goal_state, np.float64), np.asarray(state, np.float64)
        distance = float(np.linalg.norm(goal_state[:2] - state[:2]))
        return {
            "success": distance < SUCCESS_THRESHOLD,
            "distance": distance,
            "state_dist": float(np.linalg.norm(goal_state - state)),
        }

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.RandomState(seed)
        init_state = sample_free_state(rng)
        return init_state, sample_free_state(rng)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()

"""The shared push scene of the deformable envs (see :mod:`dinowm_core.envs.deformable` for the design).

A table, a capsule pusher driven by position actuators, and ``num_particles`` particle bodies that a subclass
describes (``_object_xml``, ``_initial_positions``, ``_goal_transform``); the push, settling, state, rendering,
Chamfer success and init/goal sampling live here.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from dinowm_core.envs.base import PlanningEnv
from dinowm_core.envs.mujoco_render import OffscreenRenderer, mujoco

#: half extents of the table workspace (reference: a 7 x 9 box), MuJoCo (x, y)
WORKSPACE_HALF = np.array([3.5, 4.5])
_CAMERA = "overhead"


@dataclass(frozen=True)
class PushParams:
    """How one push is executed. Speeds are in table units per second."""

    timestep: float = 0.005
    push_speed: float = 2.0  # 1 cm per substep: slow against the particle radii, so contacts stay resolved
    lower_speed: float = 4.0
    push_height: float = 0.02  # pusher bottom above the table during the push
    lift_height: float = 0.8  # pusher bottom when travelling: above any pile
    settle_steps: int = 100  # 0.5 s; particle damping makes this enough (reference: 200 FleX steps)
    init_settle_steps: int = 100  # free settling of a freshly placed random configuration
    #: MuJoCo sleep velocity tolerance (units/s); 0 disables sleeping. See ``GranularEnv``.
    sleep_tolerance: float = 0.0
    pusher_radius: float = 0.1
    pusher_half_length: float = 0.3


def chamfer_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Reference Chamfer distance on xyz: mean nearest-neighbour distance x->y plus mean y->x.

    ``x`` (N, >=3), ``y`` (M, >=3); only the first three columns are used (the reference drops inv_mass).
    """
    x, y = np.asarray(x, np.float64)[:, :3], np.asarray(y, np.float64)[:, :3]
    dist = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)  # (N, M)
    return float(dist.min(axis=1).mean() + dist.min(axis=0).mean())


def rotation_matrix(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


class PushSceneEnv(PlanningEnv):
    """Shared scene, pusher, state layout, rendering and evaluation; subclasses build the object."""

    proprio_dim = 1
    action_dim = 4
    num_particles: int = 0
    particle_radius: float = 0.05
    particle_mass: float = 0.01
    particle_rgba: str = "1 0.35 0.05 1"
    #: viscous joint damping (a drag that shortens settling); MuJoCo forbids it on flex vertex bodies
    particle_damping: float = 0.0
    #: Chamfer success threshold, see ``success_threshold``
    success_particle_diameters: float = 2.0
    #: per-object overrides of ``PushParams`` (constructor kwargs override these in turn)
    default_push: dict[str, Any] = {}
    #: constraint solver attributes of ``<option>``
    solver_xml: str = 'solver="Newton" iterations="20" ls_iterations="10"'

    def __init__(self, img_size: int = 224, render_mode: str | None = "rgb_array", **push: Any) -> None:
        super().__init__(img_size=img_size, render_mode=render_mode)
        self.params = PushParams(**{**self.default_push, **push})
        self.action_space = spaces.Box(
            low=np.tile(-WORKSPACE_HALF, 2).astype(np.float32),
            high=np.tile(WORKSPACE_HALF, 2).astype(np.float32),
            dtype=np.float32,
        )
        self.model = mujoco.MjModel.from_xml_string(self._scene_xml())
        self._particle_qpos = self._origin_particle_bodies()
        self._pusher_qpos = self.model.jnt_qposadr[self._joint_ids("pusher_")]
        self._particle_trees = self.model.body_treeid[
            [self.model.body(f"p{i}").id for i in range(self.num_particles)]
        ]
        self.data = mujoco.MjData(self.model)
        self._renderer: OffscreenRenderer | None = OffscreenRenderer(
            self.model, self.img_size, camera=_CAMERA
        )
        self._set_positions(self._initial_positions(np.random.default_rng(0)))

    # ---- scene ----------------------------------------------------------------------------------
    def _object_xml(self) -> tuple[str, str]:
        """(worldbody XML of the particles, extra top-level XML such as deformables/equalities)."""
        raise NotImplementedError

    def _initial_positions(self, rng: np.random.Generator) -> np.ndarray:
        """An unsettled random configuration, MuJoCo (N, 3)."""
        raise NotImplementedError

    def _particle_body(self, i: int, pos: np.ndarray, geom: bool) -> str:
        # contype 1 / conaffinity 3: the particles collide with the table and walls (bit 1) and the pusher (bit 2)
        sphere = (
            f'<geom type="sphere" size="{self.particle_radius}" contype="1" conaffinity="3" rgba="{self.particle_rgba}"/>'
            if geom
            else ""
        )
        joints = "".join(
            f'<joint name="p{i}_{a}" type="slide" axis="{axis}" damping="{self.particle_damping}"/>'
            for a, axis in (("x", "1 0 0"), ("y", "0 1 0"), ("z", "0 0 1"))
        )
        return (
            f'<body name="p{i}" pos="{pos[0]} {pos[1]} {pos[2]}">{joints}{sphere}'
            f'<inertial pos="0 0 0" mass="{self.particle_mass}" diaginertia="1e-6 1e-6 1e-6"/></body>'
        )

    def _scene_xml(self) -> str:
        p = self.params
        hx, hy = WORKSPACE_HALF
        walls = "".join(
            f'<geom type="box" pos="{x} {y} 0.15" size="{sx} {sy} 0.15" rgba="0.55 0.45 0.35 1"/>'
            for x, y, sx, sy in (
                (hx + 0.05, 0, 0.05, hy + 0.1),
                (-hx - 0.05, 0, 0.05, hy + 0.1),
                (0, hy + 0.05, hx + 0.1, 0.05),
                (0, -hy - 0.05, hx + 0.1, 0.05),
            )
        )
        # contype 2 / conaffinity 0: the pusher touches particles only, never the table or the walls.
        # rgba alpha 0 hides it, so a frame is a function of the particle state alone.
        pusher = f"""
        <body name="pusher" pos="0 0 0" gravcomp="1">
          <joint name="pusher_x" type="slide" axis="1 0 0"/>
          <joint name="pusher_y" type="slide" axis="0 1 0"/>
          <joint name="pusher_z" type="slide" axis="0 0 1"/>
          <geom type="capsule" size="{p.pusher_radius} {p.pusher_half_length}" contype="2" conaffinity="0"
                mass="1" rgba="0 0 0 0"/>
        </body>"""
        actuators = "".join(
            f'<position joint="pusher_{a}" kp="2000" kv="90" ctrllimited="false"/>' for a in "xyz"
        )
        bodies, extra = self._object_xml()
        # 45 degree pitch looking at the workspace centre from the -y side (reference: camera pitch 45 deg)
        dist, aim_y = 13.0, 0.25
        c = math.sqrt(0.5)
        sleep = (
            f'sleep_tolerance="{p.sleep_tolerance}"><flag sleep="enable"/></option>'
            if p.sleep_tolerance
            else "/>"
        )
        return f"""
<mujoco model="{self.env_name}">
  <option timestep="{p.timestep}" integrator="implicitfast" cone="pyramidal" {self.solver_xml} {sleep}
  <visual><global offwidth="{self.img_size}" offheight="{self.img_size}"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.55 0.55 0.55"/></visual>
  <default><geom friction="0.5 0.005 0.0001" solref="0.01 1"/></default>
  <worldbody>
    <geom name="table" type="plane" size="{hx + 0.5} {hy + 0.5} 0.1" contype="1" conaffinity="1"
          rgba="0.8 0.8 0.78 1"/>
    {walls}
    <camera name="{_CAMERA}" pos="0 {aim_y - dist * c} {dist * c}" xyaxes="1 0 0 0 {c} {c}" fovy="45"/>
    {pusher}
    {bodies}
  </worldbody>
  {extra}
  <actuator>{actuators}</actuator>
</mujoco>"""

    def _joint_ids(self, prefix: str) -> np.ndarray:
        names = [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in range(self.model.njnt)]
        return np.array([j for j, n in enumerate(names) if n and n.startswith(prefix)])

    def _origin_particle_bodies(self) -> np.ndarray:
        """Move every particle body's frame to the world origin; return the (N, 3) qpos addresses.

        Slide-joint kinematics is ``x = body_pos + axis * (qpos - qpos0)``. With ``body_pos = qpos0 = 0`` a
        particle's world position *is* its qpos, bit for bit, so ``get_state(set_state(s)) == s`` exactly.
        The flex rest lengths were computed at compile time and are unaffected.
        """
        addr = np.empty((self.num_particles, 3), dtype=np.int64)
        for i in range(self.num_particles):
            body = self.model.body(f"p{i}").id
            self.model.body_pos[body] = 0.0
            for k, a in enumerate("xyz"):
                addr[i, k] = self.model.jnt_qposadr[self.model.joint(f"p{i}_{a}").id]
        self.model.qpos0[addr.ravel()] = 0.0
        return addr

    # ---- simulation -----------------------------------------------------------------------------
    def _positions(self) -> np.ndarray:
        return self.data.qpos[self._particle_qpos].copy()  # (N, 3), MuJoCo frame

    def _set_positions(self, positions: np.ndarray, pusher: np.ndarray | None = None) -> None:
        """Restart the simulation with particles at ``positions`` (N, 3), all velocities zero."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._particle_qpos] = positions
        park = np.array([0.0, 0.0, 5.0]) if pusher is None else pusher
        self.data.qpos[self._pusher_qpos] = park
        self.data.ctrl[:] = park
        mujoco.mj_forward(self.model, self.data)

    def _pusher_z(self, bottom: float) -> float:
        return bottom + self.params.pusher_half_length + self.params.pusher_radius

    def _move(self, start: np.ndarray, end: np.ndarray, speed: float) -> int:
        """Drive the pusher target linearly from ``start`` to ``end`` (3,) at ``speed``; return substeps."""
        n = max(1, math.ceil(float(np.linalg.norm(end - start)) / (speed * self.params.timestep)))
        for k in range(1, n + 1):
            self.data.ctrl[:] = start + (end - start) * (k / n)
            mujoco.mj_step(self.model, self.data)
        return n

    def _settle(self, n: int) -> int:
        """Step freely for up to ``n`` substeps; return how many ran.

        Stops early once every particle sleeps: sleeping bodies do not move, so the remaining substeps could
        not change the state and stopping is exact, not an approximation.
        """
        for k in range(n):
            if self.params.sleep_tolerance and not self.data.tree_awake[self._particle_trees].any():
                return k
            mujoco.mj_step(self.model, self.data)
        return n

    def _push(self, action: np.ndarray) -> int:
        p = self.params
        up, down = self._pusher_z(p.lift_height), self._pusher_z(p.push_height)
        start_up = np.array([action[0], action[1], up])
        start, end = np.array([action[0], action[1], down]), np.array([action[2], action[3], down])
        self._set_positions(self._positions(), pusher=start_up)
        n = self._move(start_up, start, p.lower_speed)
        n += self._move(start, end, p.push_speed)
        n += self._move(end, np.array([action[2], action[3], up]), p.lower_speed)
        return n + self._settle(p.settle_steps)

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        low, high = self.action_space.low.astype(np.float64), self.action_space.high.astype(np.float64)
        substeps = self._push(np.clip(action, low, high))
        # Drop the leftover velocities: the state is positions only, and restarting from them keeps it Markov.
        self._set_positions(self._positions())
        return {"substeps": substeps}

    # ---- state ----------------------------------------------------------------------------------
    def _to_state(self, positions: np.ndarray) -> np.ndarray:
        state = np.empty((self.num_particles, 4))
        state[:, 0], state[:, 1], state[:, 2] = positions[:, 0], positions[:, 2], positions[:, 1]
        state[:, 3] = 1.0 / self.particle_mass
        return state.reshape(-1)

    def _from_state(self, state: np.ndarray) -> np.ndarray:
        rows = np.asarray(state, np.float64).reshape(self.num_particles, 4)
        return np.stack([rows[:, 0], rows[:, 2], rows[:, 1]], axis=1)

    def get_state(self) -> np.ndarray:
        return self._to_state(self._positions())

    def _set_state(self, state: np.ndarray) -> None:
        # inv_mass (column 3) is a constant of the scene and is not read back.
        self._set_positions(self._from_state(state))

    def get_proprio(self) -> np.ndarray:
        return np.zeros(1)  # reference: a dummy proprio

    def _settled_state(self, rng: np.random.Generator) -> np.ndarray:
        self._set_positions(self._initial_positions(rng))
        self._settle(self.params.init_settle_steps)
        return self._to_state(self._positions())

    def _random_state(self) -> np.ndarray:
        return self._settled_state(self.np_random)

    # ---- rendering ------------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        if self._renderer is None:
            raise RuntimeError(f"{self.env_name}: render() after close()")
        return self._renderer.render(self.data)

    def __del__(self) -> None:
        # an env dropped without close() must not corrupt the other renderers (see close)
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            renderer.close()  # OffscreenRenderer.close() makes its own GL context current first
        super().close()

    # ---- evaluation and goals -------------------------------------------------------------------
    @property
    def success_threshold(self) -> float:
        """Chamfer distance under which a goal counts as reached (the reference's 0 is never met, bug 11).

        Two particle diameters: each of the two directional means is then about one diameter, i.e. on average
        every particle lies on the goal's footprint and vice versa.
        """
        return self.success_particle_diameters * 2.0 * self.particle_radius

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        goal = np.asarray(goal_state, np.float64).reshape(self.num_particles, 4)
        cur = np.asarray(state, np.float64).reshape(self.num_particles, 4)
        cd = chamfer_distance(goal, cur)
        return {"success": bool(cd < self.success_threshold), "chamfer_distance": cd, "distance": cd}

    def _goal_transform(self, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Goal table coordinates (N, 2) from the init's."""
        raise NotImplementedError

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        saved = self._positions()
        init = self._settled_state(rng)
        self._set_positions(saved)
        rows = init.reshape(self.num_particles, 4).copy()
        xy = self._goal_transform(rows[:, [0, 2]], rng)
        rows[:, 0], rows[:, 2] = xy[:, 0], xy[:, 1]
        return init, rows.reshape(-1)


def inside_workspace(xy: np.ndarray, margin: float) -> np.ndarray:
    """Translate ``xy`` (N, 2) by the least amount that puts it ``margin`` inside the workspace."""
    bound = WORKSPACE_HALF - margin
    low_excess = np.minimum(xy.min(axis=0) + bound, 0.0)  # negative where below -bound
    high_excess = np.maximum(xy.max(axis=0) - bound, 0.0)
    return xy - low_excess - high_excess

"""Rope and granular pushing on MuJoCo, in place of DINO-WM's NVIDIA FleX scenes (reference section 6.5).

PyFleX cannot be installed, so both scenes are rebuilt in MuJoCo with FleX's particle model: every particle is
a body with three slide joints (position only, no rotation, as a FleX particle). The rope chains its 40
particles with a 1-D ``<flex>`` whose edges are held at rest length by a flex equality constraint; the flex
capsules collide, so the pusher cannot slip between two particles. Granular material is 300 spheres with
viscous joint damping whose resting islands sleep (MuJoCo's counterpart of FleX's sleep threshold). The rope
has no bending stiffness (the reference's has 0.8): a 1-D flex has no bending term, and springs between
particles i and i+2 resist bending only to second order in the bend angle (measured: no effect against table
friction); a cable of ball joints would change the state from positions to angles.

Coordinates. The reference is y-up and acts in its table plane (x, z); MuJoCo is z-up. Reference (x, y, z) is
MuJoCo (x, z, y): actions ``[x_s, z_s, x_e, z_e]`` are MuJoCo (x, y) table coordinates and the state keeps the
reference layout, one row ``[x, height, z, inv_mass]`` per particle, flattened (rope 40 x 4 = 160, granular
300 x 4 = 1200). Lengths are in the reference's units (a 7 x 9 workspace, a rope of length 2.5), so Chamfer
distances compare with the paper's.

One env step is one push (reference: start + lift -> start -> end -> end + lift, then settle): the pusher,
a vertical capsule driven by position actuators (a physics body: a kinematically moved pusher tunnels through
the rope), appears above the start, lowers, pushes in a straight line at a fixed speed, lifts, and the scene
settles. Every step restarts the simulation from the particle positions alone (zero velocities, cold solver
warm start), so the state is Markov: ``reset(state=s_t)`` then ``step(a_t)`` reproduces ``s_{t+1}`` bit for bit.

Deliberate deviations from the reference: a capsule pusher instead of an xArm6 (no IK; the robot is not
drawn); the pusher is invisible in renders, so a frame depends on the state alone; pushes at 1 (rope) or 2
(granular) units/s and up to 100 settle substeps of 5 ms (rope) or 50 of 10 ms (granular, ending early once the
pile sleeps) instead of 1/300 unit per IK step and 200 FleX steps; a
success threshold that can be met (reference bug 11, see ``_PushEnv.success_threshold``); goals are scaled or
rotated about the object's centroid and kept inside the workspace.
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


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


class _PushEnv(PlanningEnv):
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


def _inside_workspace(xy: np.ndarray, margin: float) -> np.ndarray:
    """Translate ``xy`` (N, 2) by the least amount that puts it ``margin`` inside the workspace."""
    bound = WORKSPACE_HALF - margin
    low_excess = np.minimum(xy.min(axis=0) + bound, 0.0)  # negative where below -bound
    high_excess = np.maximum(xy.max(axis=0) - bound, 0.0)
    return xy - low_excess - high_excess


class RopeEnv(_PushEnv):
    """A 2.5-long rope of 40 particles pushed on a table (reference: FleX scene 26, ``rope.yaml``)."""

    env_name = "rope"
    num_particles = 40
    state_dim = 160
    length: float = 2.5
    particle_radius = 0.05
    # Flex vertex bodies cannot take joint damping, so a faster push flings the light rope past the pusher
    # (0.4 units at speed 2); at 1 unit/s it stops within a few hundredths.
    default_push = {"push_speed": 1.0, "init_settle_steps": 50}

    def _object_xml(self) -> tuple[str, str]:
        spacing = self.length / (self.num_particles - 1)
        xs = -self.length / 2 + spacing * np.arange(self.num_particles)
        bodies = "".join(
            self._particle_body(i, np.array([x, 0.0, self.particle_radius]), geom=False)
            for i, x in enumerate(xs)
        )
        names = " ".join(f"p{i}" for i in range(self.num_particles))
        elements = " ".join(f"{i} {i + 1}" for i in range(self.num_particles - 1))
        extra = f"""
  <deformable>
    <flex name="rope" dim="1" body="{names}" element="{elements}" radius="{self.particle_radius}"
          rgba="{self.particle_rgba}">
      <contact contype="1" conaffinity="3" selfcollide="none" friction="0.5 0.005 0.0001"/>
    </flex>
  </deformable>
  <equality><flex flex="rope"/></equality>"""
        return bodies, extra

    def _initial_positions(self, rng: np.random.Generator) -> np.ndarray:
        """A gently curved rope (constant curvature up to ~0.6 rad per unit) at a random pose."""
        n, spacing = self.num_particles, self.length / (self.num_particles - 1)
        heading = rng.uniform(0.0, 2.0 * math.pi) + rng.uniform(-0.6, 0.6) * spacing * np.arange(n - 1)
        steps = spacing * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        xy = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        xy += rng.uniform(-1.5, 1.5, size=2) * np.array([1.0, 1.6]) - xy.mean(axis=0)
        z = np.full((n, 1), self.particle_radius)
        return np.concatenate([_inside_workspace(xy, 0.3), z], axis=1)

    def _goal_transform(self, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # reference: rotate about the vertical axis by U(0, 90) deg, then shift
        centre = xy.mean(axis=0)
        rotated = (xy - centre) @ _rotation(math.radians(rng.uniform(0.0, 90.0))).T + centre
        return _inside_workspace(rotated + rng.uniform(-1.0, 1.0, size=2), 0.3)


class GranularEnv(_PushEnv):
    """A pile of 300 spheres pushed on a table (reference: FleX scene 35, ``granular.yaml``)."""

    env_name = "granular"
    num_particles = 300
    state_dim = 1200
    particle_radius = 0.06
    particle_rgba = "0.1 0.3 0.9 1"
    particle_damping = 0.1
    pile_radius = 0.8
    # Speed (measured in BENCHMARKS.md "Data"): the constraint solver is ~85% of a substep (300 spheres, 400-800
    # contacts, ~3000 constraint rows). CG skips Newton's per-iteration factorization of the 903-dof Hessian
    # (4x cheaper per substep on a resting pile, 1.5x while pushing); a 10 ms step (2 cm of pusher travel per
    # substep against 6 cm grains) halves the substeps. Sleeping (FleX's particle sleep threshold in MuJoCo's
    # form) freezes resting islands: a pile at rest costs almost nothing while the pusher travels elsewhere,
    # settling ends as soon as everything is asleep, and the slow creep of soft contacts no longer spreads a
    # resting pile between pushes.
    solver_xml = 'solver="CG" iterations="20" ls_iterations="3" tolerance="1e-6"'
    default_push = {"timestep": 0.01, "settle_steps": 50, "init_settle_steps": 50, "sleep_tolerance": 0.01}

    def _object_xml(self) -> tuple[str, str]:
        lattice = self._lattice(np.random.default_rng(0))
        return "".join(self._particle_body(i, p, geom=True) for i, p in enumerate(lattice)), ""

    def _lattice(self, rng: np.random.Generator) -> np.ndarray:
        """A round, stepped pile (N, 3) centred at the origin: layers of shrinking discs, each layer shifted by
        half a cell so it rests in the hollows of the one below; small jitter breaks the symmetry."""
        d = 2.05 * self.particle_radius
        cells = np.arange(-12, 13) * d
        grid = np.stack(np.meshgrid(cells, cells, indexing="ij"), -1).reshape(-1, 2)
        layers = []
        for k in range(6):
            xy = grid + (k % 2) * d / 2
            radius = np.linalg.norm(xy, axis=1)
            keep = radius <= self.pile_radius - 0.6 * d * k
            z = np.full((int(keep.sum()), 1), self.particle_radius * (1.0 + 1.7 * k))
            layers.append(np.concatenate([xy[keep][np.argsort(radius[keep], kind="stable")], z], axis=1))
        pos = np.concatenate(layers)[: self.num_particles].copy()
        pos[:, :2] += rng.uniform(-0.02, 0.02, size=(self.num_particles, 2)) * self.particle_radius
        return pos

    def _initial_positions(self, rng: np.random.Generator) -> np.ndarray:
        pos = self._lattice(rng)
        pos[:, :2] += rng.uniform(-1.0, 1.0, size=2) * (WORKSPACE_HALF - 1.5)
        return pos

    def _goal_transform(self, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # reference: scale x and z by U(0.6, 0.9) (here about the pile centre) and shift by U(-1, 1)
        centre = xy.mean(axis=0)
        scaled = (xy - centre) * rng.uniform(0.6, 0.9, size=2) + centre
        return _inside_workspace(scaled + rng.uniform(-1.0, 1.0, size=2), 0.3)

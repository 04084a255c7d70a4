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
success threshold that can be met (reference bug 11, see ``PushSceneEnv.success_threshold``); goals are scaled or
rotated about the object's centroid and kept inside the workspace.
"""

from __future__ import annotations

import math

import numpy as np

from dinowm_core.envs.push_scene import (
    WORKSPACE_HALF,
    PushSceneEnv,
    chamfer_distance,
    inside_workspace,
    rotation_matrix,
)

__all__ = ["GranularEnv", "RopeEnv", "chamfer_distance"]


class RopeEnv(PushSceneEnv):
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
        return np.concatenate([inside_workspace(xy, 0.3), z], axis=1)

    def _goal_transform(self, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # reference: rotate about the vertical axis by U(0, 90) deg, then shift
        centre = xy.mean(axis=0)
        rotated = (xy - centre) @ rotation_matrix(math.radians(rng.uniform(0.0, 90.0))).T + centre
        return inside_workspace(rotated + rng.uniform(-1.0, 1.0, size=2), 0.3)


class GranularEnv(PushSceneEnv):
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
        return inside_workspace(scaled + rng.uniform(-1.0, 1.0, size=2), 0.3)

"""Reacher: a two-link planar arm equivalent to dm_control's ``reacher`` (DINO-WM paper, Table 1 / Table 11).

dm_control is not a dependency; the model is our own MJCF with dm_control's physical parameters:

* arena 0.6 x 0.6 (ground plane half-size 0.3), camera 0.75 above the origin looking straight down
  (dm_control's ``fixed`` camera: image right = +x, up = +y);
* shoulder hinge at the origin (unlimited), upper link 0.12; wrist hinge limited to +-160 deg, forearm
  capsule 0.10 with the fingertip sphere (radius 0.01) at 0.12 from the wrist; capsule radius 0.01,
  density 1000;
* joint damping 0.01; motors gear 0.05 with ``ctrlrange`` [-1, 1]; contacts disabled;
* no solver warm start (our choice): the next state depends on (state, action) alone, so resetting to a
  recorded state replays bit-exactly even while the wrist limit is active;
* timestep 0.02 s, Euler, one physics step per env step (``frame_skip`` 1: dm_control's control timestep
  is 0.02 s; the dataset-level frameskip 5 of the paper is applied by the world model's windows);
* the target is a sphere of radius ``target_size`` (0.05, dm_control ``easy``; ``hard`` uses 0.015) on a mocap
  body, so it is part of the simulation state rather than of the model.

State ``[q1, q2, dq1, dq2, target_x, target_y]``; proprio ``[q1, q2, dq1, dq2]``; actions are normalized
torques in [-1, 1]^2. The rendered frame shows the state in ``info["state"]`` (``mj_forward`` after each step).

Planning targets a *goal state*, not the target sphere: ``eval_state(goal, cur)`` compares the fingertip
positions of the two arm configurations and succeeds when they are closer than ``success_threshold``
(default 0.05 = the easy target's radius: the fingertip would lie inside a target centred on the goal
fingertip). ``reward`` is dm_control's sparse reward: fingertip within target radius + fingertip radius.

``sample_init_goal(seed)`` draws, from ``RandomState(seed)``, two independent arm configurations at rest
(dm_control's randomization: shoulder U(-pi, pi), wrist U(+-160 deg)) and one dm_control-style target
(radius U(0.05, 0.20), angle U(0, 2 pi)) shared by both, so init and goal frames differ only in the arm.
The reference document does not describe DINO-WM's Reacher wrapper; these choices are ours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from dinowm_core.envs.base import PlanningEnv
from dinowm_core.envs.mujoco_render import OffscreenRenderer, mujoco

UPPER_ARM_LENGTH = 0.12
FOREARM_LENGTH = 0.12
FINGER_RADIUS = 0.01
WRIST_LIMIT = np.deg2rad(160.0)
TARGET_SIZE_EASY = 0.05
#: dm_control draws the target at radius U(0.05, 0.20) from the shoulder, angle U(0, 2 pi)
TARGET_RADIUS_RANGE = (0.05, 0.20)
TARGET_Z = 0.01


def reacher_xml(target_size: float = TARGET_SIZE_EASY) -> str:
    """MJCF of the two-link reacher (dm_control's parameters, our own model)."""
    return f"""
<mujoco model="reacher">
  <compiler angle="radian"/>
  <option timestep="0.02" integrator="Euler">
    <!-- no solver warm start: the next state is a function of (state, action) alone -->
    <flag contact="disable" warmstart="disable"/>
  </option>
  <default>
    <joint type="hinge" axis="0 0 1" damping="0.01"/>
    <motor gear="0.05" ctrlrange="-1 1" ctrllimited="true"/>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".1 .2 .3" rgb2=".2 .3 .4" width="300"
             height="300" mark="edge" markrgb=".2 .3 .4"/>
    <material name="grid" texture="grid" texrepeat="1 1" texuniform="true"/>
    <material name="self" rgba=".7 .5 .3 1"/>
    <material name="effector" rgba=".7 .4 .2 1"/>
    <material name="decoration" rgba=".3 .5 .7 1"/>
    <material name="target" rgba=".6 .3 .3 1"/>
  </asset>
  <visual>
    <headlight ambient=".4 .4 .4" diffuse=".8 .8 .8" specular="0.1 0.1 0.1"/>
    <map znear=".01"/>
  </visual>
  <worldbody>
    <light name="light" pos="0 0 1"/>
    <camera name="fixed" pos="0 0 .75" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <geom name="ground" type="plane" size=".3 .3 10" material="grid"/>
    <geom name="wall_x" type="plane" pos="-.3 0 .02" zaxis="1 0 0" size=".02 .3 .02" material="decoration"/>
    <geom name="wall_y" type="plane" pos="0 -.3 .02" zaxis="0 1 0" size=".3 .02 .02" material="decoration"/>
    <geom name="wall_neg_x" type="plane" pos=".3 0 .02" zaxis="-1 0 0" size=".02 .3 .02"
          material="decoration"/>
    <geom name="wall_neg_y" type="plane" pos="0 .3 .02" zaxis="0 -1 0" size=".3 .02 .02"
          material="decoration"/>
    <geom name="root" type="cylinder" fromto="0 0 0 0 0 0.02" size=".011" material="decoration"/>
    <body name="arm" pos="0 0 .01">
      <geom name="arm" type="capsule" fromto="0 0 0 {UPPER_ARM_LENGTH} 0 0" size=".01" material="self"/>
      <joint name="shoulder"/>
      <body name="hand" pos="{UPPER_ARM_LENGTH} 0 0">
        <geom name="hand" type="capsule" fromto="0 0 0 0.1 0 0" size=".01" material="self"/>
        <joint name="wrist" limited="true" range="{-WRIST_LIMIT} {WRIST_LIMIT}"/>
        <body name="finger" pos="{FOREARM_LENGTH} 0 0">
          <geom name="finger" type="sphere" size="{FINGER_RADIUS}" material="effector"/>
        </body>
      </body>
    </body>
    <body name="target" mocap="true" pos="0 0 {TARGET_Z}">
      <geom name="target" type="sphere" size="{target_size}" material="target"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="shoulder" joint="shoulder"/>
    <motor name="wrist" joint="wrist"/>
  </actuator>
</mujoco>
"""


def fingertip_position(joint_angles: np.ndarray) -> np.ndarray:
    """Planar forward kinematics: ``(..., 2)`` joint angles -> ``(..., 2)`` fingertip ``(x, y)``."""
    q1, q2 = joint_angles[..., 0], joint_angles[..., 1]
    x = UPPER_ARM_LENGTH * np.cos(q1) + FOREARM_LENGTH * np.cos(q1 + q2)
    y = UPPER_ARM_LENGTH * np.sin(q1) + FOREARM_LENGTH * np.sin(q1 + q2)
    return np.stack([x, y], axis=-1)


def _sample_arm(rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    """dm_control's joint randomization: unlimited hinge U(-pi, pi), limited hinge U(range); at rest."""
    q1, q2 = rng.uniform(-np.pi, np.pi), rng.uniform(-WRIST_LIMIT, WRIST_LIMIT)
    return np.array([q1, q2, 0.0, 0.0])


def _sample_target(rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    angle, radius = rng.uniform(0.0, 2 * np.pi), rng.uniform(*TARGET_RADIUS_RANGE)
    return np.array([radius * np.sin(angle), radius * np.cos(angle)])


class ReacherEnv(PlanningEnv):
    """Two-link planar reacher; actions are torques in [-1, 1]^2, state ``[q1, q2, dq1, dq2, tx, ty]``."""

    env_name = "reacher"
    state_dim = 6
    proprio_dim = 4
    action_dim = 2

    def __init__(
        self,
        img_size: int = 224,
        render_mode: str | None = "rgb_array",
        target_size: float = TARGET_SIZE_EASY,
        success_threshold: float = TARGET_SIZE_EASY,
    ) -> None:
        if target_size <= 0 or success_threshold <= 0:
            raise ValueError(
                f"target_size and success_threshold must be positive, got {target_size}, {success_threshold}"
            )
        super().__init__(img_size=img_size, render_mode=render_mode)
        self.target_size = float(target_size)
        self.success_threshold = float(success_threshold)
        self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.model = mujoco.MjModel.from_xml_string(reacher_xml(self.target_size))
        self.data = mujoco.MjData(self.model)
        self._finger_body = self.model.body("finger").id
        self._renderer: OffscreenRenderer | None = None
        mujoco.mj_forward(self.model, self.data)

    # ---- PlanningEnv hooks ----------------------------------------------------------------------
    def _set_state(self, state: np.ndarray) -> None:
        # Resetting zeroes the solver warm start, time and controls, so a replay is bit-exact.
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = state[:2]
        self.data.qvel[:] = state[2:4]
        self.data.mocap_pos[0, :2] = state[4:6]
        self.data.mocap_pos[0, 2] = TARGET_Z
        mujoco.mj_forward(self.model, self.data)

    def _random_state(self) -> np.ndarray:
        return np.concatenate([_sample_arm(self.np_random), _sample_target(self.np_random)])

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        self.data.ctrl[:] = np.clip(action, -1.0, 1.0)
        mujoco.mj_step(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)  # positions for rendering match the returned state
        return {}

    def get_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel, self.data.mocap_pos[0, :2]]).astype(np.float64)

    def get_proprio(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    @property
    def fingertip(self) -> np.ndarray:
        """Simulated fingertip ``(x, y)`` (equals ``fingertip_position(qpos)``)."""
        return self.data.xpos[self._finger_body, :2].copy()

    def render(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = OffscreenRenderer(self.model, self.img_size, camera="fixed")
        return self._renderer.render(self.data)

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        goal_tip = fingertip_position(np.asarray(goal_state, np.float64)[:2])
        tip = fingertip_position(np.asarray(state, np.float64)[:2])
        distance = float(np.linalg.norm(goal_tip - tip))
        return {"success": distance < self.success_threshold, "distance": distance}

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.RandomState(seed)
        init_arm, goal_arm, target = _sample_arm(rng), _sample_arm(rng), _sample_target(rng)
        return np.concatenate([init_arm, target]), np.concatenate([goal_arm, target])

    def reward(self, state: np.ndarray) -> float:
        """dm_control's sparse reward: 1 when the fingertip is within ``target_size + 0.01`` of the target centre."""
        tip = fingertip_position(np.asarray(state, np.float64)[:2])
        reached = np.linalg.norm(tip - state[4:6]) <= self.target_size + FINGER_RADIUS
        return float(reached)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()

"""PushT: push a T-shaped block onto a fixed goal pose with a round agent (reference section 6.2).

pymunk 2-D physics in a 512 px world, as DINO-WM's ``PushTEnv`` / ``PushTWrapper``:

* the agent is a KINEMATIC circle (r = 15) steered by a PD rule towards ``agent_pos + 100 * action``
  (relative actions), 10 substeps of 0.01 s per env step;
* the block is a T of two boxes at scale 30 (bar 120 x 30 on top of a 30 x 90 stem), mass 1, moment
  ``2 * moment_for_poly(bar)`` and centre of gravity between the two box centroids, as the reference builds
  it; gravity 0 and space damping 0 (pymunk then zeroes dynamic velocities every substep, so the block
  moves only while pushed);
* state ``[ax, ay, bx, by, angle mod 2 pi, avx, avy]`` (5-D without velocity), proprio ``[ax, ay, avx, avy]``;
* reward ``clip(coverage / 0.95, 0, 1)``, coverage = area(block & goal T) / area(goal T), goal (256, 256, pi/4).

Frames come from our own rasterizer (PIL at a supersampled size, box-filtered down): white background,
LightGreen goal T, LightSlateGray block, RoyalBlue agent, LightGray walls, in the reference's colours.

Deliberate differences from the reference:

* bug 8 fixed: ``sample_init_goal`` draws the block angle uniformly in [-pi, pi) (reference: ``randn * 2 pi
  - pi``), and reports it mod 2 pi like every other state;
* the state is float64 (the reference casts to float32); ``n_contacts`` is not reported;
* the declared action space is ``Box(-1, 1)`` (100 px), never enforced (no clipping, as the reference).

Contacts are frictionless, as the reference *actually* simulates: it writes ``friction = 1`` on the bodies,
which pymunk ignores (friction is a shape property, default 0). Like the reference, a reset-to-state rebuilds the space, sets agent velocity and position, then block
angle, then block position, and runs ONE physics substep of 0.01 s: the agent moves by ``velocity * 0.01``
and an overlapping block is pushed out before the first frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pymunk
from gymnasium import spaces
from PIL import Image, ImageDraw

from dinowm_core.envs.base import PlanningEnv

WINDOW = 512
DT = 0.01  # sim_hz 100
N_SUBSTEPS = 10  # sim_hz 100 / control_hz 10
K_P, K_V = 100.0, 20.0
ACTION_SCALE = 100.0
AGENT_RADIUS = 15.0
AGENT_START = (256.0, 400.0)
BLOCK_START = (256.0, 300.0)
GOAL_POSE = (256.0, 256.0, math.pi / 4)
WALL_SEGMENTS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
WALL_RADIUS = 2.0
# The T at the reference's (forced) scale 30, local coordinates, y pointing down.
T_BAR = ((-60.0, 30.0), (60.0, 30.0), (60.0, 0.0), (-60.0, 0.0))
T_STEM = ((-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0))
T_PARTS = (T_BAR, T_STEM)
SUCCESS_POS = 20.0
SUCCESS_ANGLE = math.pi / 9
FULL_REWARD_COVERAGE = 0.95
ACTION_BOUND = 1.0  # advisory: relative targets of up to 100 px per axis; reference data has std ~0.2

# Colours (pygame names); the reference fills shapes 1.2x lighter and outlines them in the base colour.
WHITE = (255, 255, 255)
GOAL_COLOR = (144, 238, 144)  # LightGreen
BLOCK_COLOR, BLOCK_FILL = (119, 136, 153), (142, 163, 183)  # LightSlateGray
AGENT_COLOR, AGENT_FILL = (65, 105, 225), (78, 126, 255)  # RoyalBlue
WALL_COLOR = (211, 211, 211)  # LightGray
OUTLINE_WIDTH = 4.0  # reference fat segments of radius 2
AGENT_RIM = 4.0


# ---- geometry ---------------------------------------------------------------------------------------
def t_polygons(x: float, y: float, angle: float) -> list[np.ndarray]:
    """World vertices (4, 2) of the T's two boxes for a body at (x, y) rotated by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return [np.asarray(part) @ rot.T + (x, y) for part in T_PARTS]


Polygon = list[tuple[float, float]]


def _signed_area(poly: Polygon) -> float:
    """Shoelace area, positive for counter-clockwise vertices (in x-right, y-up axes)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True))


def _clip_convex(subject: Polygon, clip: Polygon) -> Polygon:
    """Sutherland-Hodgman: the part of polygon ``subject`` inside the convex, counter-clockwise ``clip``."""
    out = subject
    for i in range(len(clip)):
        (ax, ay), (bx, by) = clip[i], clip[(i + 1) % len(clip)]
        points, out = out, []
        if not points:
            break
        sides = [(bx - ax) * (py - ay) - (by - ay) * (px - ax) for px, py in points]  # >= 0: inside
        for j, cur in enumerate(points):
            prev, s_prev, s_cur = points[j - 1], sides[j - 1], sides[j]
            if (s_prev >= 0) != (s_cur >= 0):  # the edge crosses the clip line
                t = s_prev / (s_prev - s_cur)
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if s_cur >= 0:
                out.append(cur)
    return out


def overlap_area(polys_a: list[np.ndarray], polys_b: list[np.ndarray]) -> float:
    """Area of (union of A) & (union of B) for convex parts with disjoint interiors within each set."""
    # Plain floats: a handful of 4-gons is far cheaper in Python than through numpy calls.
    parts_a = [[(float(x), float(y)) for x, y in poly] for poly in polys_a]
    parts_b = [[(float(x), float(y)) for x, y in poly] for poly in polys_b]
    parts_b = [poly if _signed_area(poly) > 0 else poly[::-1] for poly in parts_b]
    total = 0.0
    for a in parts_a:
        for b in parts_b:
            if (
                max(p[0] for p in a) <= min(p[0] for p in b)
                or max(p[0] for p in b) <= min(p[0] for p in a)
                or max(p[1] for p in a) <= min(p[1] for p in b)
                or max(p[1] for p in b) <= min(p[1] for p in a)
            ):
                continue  # disjoint bounding boxes
            inter = _clip_convex(a, b)
            if len(inter) >= 3:
                total += abs(_signed_area(inter))
    return total


T_AREA = sum(abs(_signed_area(list(part))) for part in T_PARTS)  # 6300 px^2


def coverage(block_pose: np.ndarray, goal_pose: np.ndarray) -> float:
    """Fraction of the goal T covered by the block T; poses are (x, y, angle)."""
    return overlap_area(t_polygons(*block_pose[:3]), t_polygons(*goal_pose[:3])) / T_AREA


def wrapped_angle_diff(a: float, b: float) -> float:
    """|a - b| on the circle, in [0, pi]."""
    d = abs(a - b) % (2 * math.pi)
    return min(d, 2 * math.pi - d)


# ---- physics ----------------------------------------------------------------------------------------
def _build_space() -> tuple[pymunk.Space, pymunk.Body, pymunk.Body]:
    """A fresh space (no warm-started contacts carried over), bodies added in the reference's order."""
    space = pymunk.Space()
    space.gravity = (0.0, 0.0)
    space.damping = 0.0
    space.add(*(pymunk.Segment(space.static_body, a, b, WALL_RADIUS) for a, b in WALL_SEGMENTS))

    agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
    agent.position = AGENT_START
    space.add(agent, pymunk.Circle(agent, AGENT_RADIUS))

    # The reference adds the bar's moment twice (its stem moment reuses the bar's vertices).
    block = pymunk.Body(1.0, 2 * pymunk.moment_for_poly(1.0, T_BAR))
    bar, stem = pymunk.Poly(block, T_BAR), pymunk.Poly(block, T_STEM)
    block.center_of_gravity = (bar.center_of_gravity + stem.center_of_gravity) / 2
    block.position = BLOCK_START
    space.add(block, bar, stem)
    return space, agent, block


# ---- rendering --------------------------------------------------------------------------------------
def _supersample(img_size: int) -> int:
    """Draw near the reference's 512 px canvas (at most 4x) and box-filter down: smooth small frames."""
    return max(1, min(4, round(WINDOW / img_size)))


def render_scene(
    img_size: int, agent_xy: np.ndarray, block_pose: np.ndarray, goal_pose: np.ndarray | None
) -> np.ndarray:
    """(img_size, img_size, 3) uint8 frame of the scene."""
    factor = _supersample(img_size)
    size = img_size * factor
    k = size / WINDOW
    img = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(img)
    line_w = max(1, round(OUTLINE_WIDTH * k))
    for a, b in WALL_SEGMENTS:
        draw.line([(a[0] * k, a[1] * k), (b[0] * k, b[1] * k)], fill=WALL_COLOR, width=line_w)
    if goal_pose is not None:
        for poly in t_polygons(*goal_pose):
            draw.polygon([tuple(p) for p in poly * k], fill=GOAL_COLOR)
    for poly in t_polygons(*block_pose):
        points = [tuple(p) for p in poly * k]
        draw.polygon(points, fill=BLOCK_FILL)
        draw.line([*points, points[0]], fill=BLOCK_COLOR, width=line_w, joint="curve")
    ax, ay = agent_xy[0] * k, agent_xy[1] * k
    for radius, color in ((AGENT_RADIUS, AGENT_COLOR), (AGENT_RADIUS - AGENT_RIM, AGENT_FILL)):
        r = radius * k
        draw.ellipse([ax - r, ay - r, ax + r, ay + r], fill=color)
    if factor > 1:
        img = img.reduce(factor)
    return np.asarray(img)


# ---- the env ----------------------------------------------------------------------------------------
class PushTEnv(PlanningEnv):
    """PushT with relative actions (x100 px), DINO-WM's 7-D state and success test."""

    env_name = "pusht"
    action_dim = 2

    def __init__(
        self,
        img_size: int = 224,
        with_velocity: bool = True,
        with_target: bool = True,
        shape: str = "T",
        render_mode: str | None = "rgb_array",
    ) -> None:
        self.with_velocity = bool(with_velocity)
        self.with_target = bool(with_target)
        self.state_dim = 7 if self.with_velocity else 5
        self.proprio_dim = 4 if self.with_velocity else 2
        super().__init__(img_size=img_size, render_mode=render_mode)
        self.action_space = spaces.Box(-ACTION_BOUND, ACTION_BOUND, (self.action_dim,), np.float32)
        self.set_env_params({"shape": shape})
        self.goal_pose = np.array(GOAL_POSE)
        self._space, self._agent, self._block = _build_space()

    # ---- layout ---------------------------------------------------------------------------------
    @property
    def env_params(self) -> dict[str, Any]:
        return {"shape": "T"}

    def set_env_params(self, params: dict[str, Any]) -> None:
        unknown = set(params) - {"shape"}
        if unknown:
            raise ValueError(f"pusht: unknown env params {sorted(unknown)} (known: shape)")
        shape = params.get("shape", "T")
        if shape != "T":
            raise ValueError(f"pusht: only shape 'T' is supported, got {shape!r}")

    # ---- state ----------------------------------------------------------------------------------
    def _set_state(self, state: np.ndarray) -> None:
        self._space, self._agent, self._block = _build_space()
        velocity = (float(state[5]), float(state[6])) if self.with_velocity else (0.0, 0.0)
        self._agent.velocity = velocity
        self._agent.position = (float(state[0]), float(state[1]))
        # Setting the angle rotates about the centre of gravity, which moves the body origin: set it
        # before the position so the origin lands on (bx, by) (the reference's non-legacy order).
        self._block.angle = float(state[4])
        self._block.position = (float(state[2]), float(state[3]))
        self._space.step(DT)  # as the reference: one substep so the pose "takes effect"

    def get_state(self) -> np.ndarray:
        ax, ay = self._agent.position
        bx, by = self._block.position
        pose = [ax, ay, bx, by, self._block.angle % (2 * math.pi)]
        if self.with_velocity:
            pose += list(self._agent.velocity)
        return np.array(pose, dtype=np.float64)

    def get_proprio(self) -> np.ndarray:
        ax, ay = self._agent.position
        if not self.with_velocity:
            return np.array([ax, ay])
        vx, vy = self._agent.velocity
        return np.array([ax, ay, vx, vy])

    def _random_pose(
        self, integers: Callable[[int, int], Any], uniform: Callable[[float, float], Any]
    ) -> np.ndarray:
        """Reference draw order: agent xy in [50, 450), block xy in [100, 400), then the angle."""
        pose = [integers(50, 450), integers(50, 450), integers(100, 400), integers(100, 400)]
        angle = uniform(-math.pi, math.pi) % (2 * math.pi)
        state = [*map(float, pose), angle] + ([0.0, 0.0] if self.with_velocity else [])
        return np.array(state)

    def _random_state(self) -> np.ndarray:
        return self._random_pose(self.np_random.integers, self.np_random.uniform)

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rs = np.random.RandomState(seed)
        init = self._random_pose(rs.randint, rs.uniform)
        goal = self._random_pose(rs.randint, rs.uniform)
        return init, goal

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        ax, ay = self._agent.position
        tx, ty = ax + float(action[0]) * ACTION_SCALE, ay + float(action[1]) * ACTION_SCALE
        for _ in range(N_SUBSTEPS):
            (px, py), (vx, vy) = self._agent.position, self._agent.velocity
            # PD control on a kinematic body: the same float expression order as the reference.
            acc_x = K_P * (tx - px) + K_V * (0.0 - vx)
            acc_y = K_P * (ty - py) + K_V * (0.0 - vy)
            self._agent.velocity = (vx + acc_x * DT, vy + acc_y * DT)
            self._space.step(DT)
        return {}

    # ---- observation, reward, evaluation --------------------------------------------------------
    def render(self) -> np.ndarray:
        bx, by = self._block.position
        block_pose = np.array([bx, by, self._block.angle])
        goal = self.goal_pose if self.with_target else None
        return render_scene(self.img_size, np.asarray(self._agent.position), block_pose, goal)

    def reward(self, state: np.ndarray) -> float:
        return float(np.clip(coverage(state[2:5], self.goal_pose) / FULL_REWARD_COVERAGE, 0.0, 1.0))

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        """Reference success (agent+block position within 20 px, angle within pi/9) and state distance.

        ``coverage`` is the overlap of the block T with the goal state's block T.
        """
        goal_state, state = np.asarray(goal_state, np.float64), np.asarray(state, np.float64)
        pos_diff = float(np.linalg.norm(goal_state[:4] - state[:4]))
        angle_diff = wrapped_angle_diff(float(goal_state[4]), float(state[4]))
        return {
            "success": bool(pos_diff < SUCCESS_POS and angle_diff < SUCCESS_ANGLE),
            "distance": float(np.linalg.norm(goal_state - state)),
            "pos_diff": pos_diff,
            "angle_diff": angle_diff,
            "coverage": coverage(state[2:5], goal_state[2:5]),
        }

"""Wall: the 2-D "dot and wall" navigation env of DINO-WM / PLDM (reference section 6.4).

A red Gaussian dot moves in a 65 x 65 px world: ``next = pos + 2 * action``. Border walls sit on rows and
columns 4 and 60; a vertical wall covers columns ``wall_x +- 3`` except for a door on rows ``door_y +- 4``.
Moves that cross a wall stop just short of it by the reference's collision rule (:func:`collide`).
State = proprio = ``[x, y]`` in pixel coordinates (x = column, y = row).

Frames are drawn at 65 px (white background, black walls, red dot whose green/blue channels are reduced by
``255 * intensity``) and resized bilinearly, antialiased like ``torchvision.transforms.Resize``, to
``img_size``. Everything is plain numpy/python: no hidden randomness in the dynamics.

Deliberate differences from the reference:

* bug 10 fixed: ``sample_init_goal`` uses the current wall position, and the layout is per-instance state
  (``env_params``), not a shared mutable module config;
* a move with exactly zero x-motion no longer produces NaN (the reference's slope form divides by zero);
* frames are uint8 (rounded after the resize); the reference hands float 0..255 images to its model;
* the action space is declared as ``Box(-1, 1)`` (see ``ACTION_BOUND``) but, like the reference, never
  clipped.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from gymnasium import spaces

from dinowm_core.envs.base import PlanningEnv

WORLD_SIZE = 65
BORDER_LO = 4.0  # border walls: rows/columns 4 and 60 (reference border_wall_loc 5)
BORDER_HI = float(WORLD_SIZE - 5)
WALL_HALF_WIDTH = 3  # reference wall_width 6 // 2
DOOR_HALF_HEIGHT = 4  # reference door_space
DOT_STD = 1.7
STEP_SCALE = 2.0  # next = pos + 2 * action
CONTACT_OFFSET = 0.5  # the reference's deterministic "noise" after a hit
WALL_NUDGE = 0.3
SUCCESS_RADIUS = 4.5
DEFAULT_WALL_X = 32
DEFAULT_DOOR_Y = 30
# Reference random-state padding: 2 * dot_std from walls, border_wall_loc - 1 + padding from the border.
SAMPLE_PADDING = 2 * DOT_STD
SAMPLE_BORDER_PADDING = 5 - 1 + SAMPLE_PADDING
Y_RANGE = (SAMPLE_BORDER_PADDING, WORLD_SIZE - 1 - SAMPLE_BORDER_PADDING)
# DINO-WM's wall data has per-component action std ~0.44/0.47 (reference section 3.2); PLDM draws step
# lengths from [0.2, 1.8] in random directions. Uniform samples from [-1, 1] (std 0.58) match that scale;
# each axis then moves at most 2 px per step. The bound is advisory: actions are never clipped.
ACTION_BOUND = 1.0


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _x_at_row(p1: tuple[float, float], p2: tuple[float, float], row: float) -> float:
    """x where the line p1 -> p2 meets ``y = row`` (slope form, as the reference, for identical rounding)."""
    dx, dy = p2[0] - p1[0], p2[1] - p1[1]
    if dx == 0.0 or dy == 0.0:  # vertical move, or moving along the line itself: contact at x1
        return p1[0]
    a = dy / dx
    b = p1[1] - a * p1[0]
    return (row - b) / a


def _y_at_col(p1: tuple[float, float], p2: tuple[float, float], col: float) -> float:
    dx, dy = p2[0] - p1[0], p2[1] - p1[1]
    if dx == 0.0:  # only reached when x1 == col: contact at the start point
        return p1[1]
    a = dy / dx
    b = p1[1] - a * p1[0]
    return a * col + b


def _vertical_hit(
    p1: tuple[float, float], p2: tuple[float, float], col: float, door_y: float | None
) -> tuple[float, float] | None:
    """Crossing (or touching) the vertical line ``x = col``, unless through the door rows."""
    if _sign(p1[0] - col) * _sign(p2[0] - col) > 0:
        return None
    y = _y_at_col(p1, p2, col)
    if door_y is not None and door_y - DOOR_HALF_HEIGHT <= y <= door_y + DOOR_HALF_HEIGHT:
        return None
    return col, y


def _horizontal_hit(
    p1: tuple[float, float], p2: tuple[float, float], row: float
) -> tuple[float, float] | None:
    if _sign(p1[1] - row) * _sign(p2[1] - row) > 0:
        return None
    return _x_at_row(p1, p2, row), row


def collide(
    p1: tuple[float, float], p2: tuple[float, float], wall_x: float, door_y: float
) -> tuple[float, float]:
    """Where a dot moving from ``p1`` towards ``p2`` ends up (reference ``check_wall_intersect``).

    1. Leaving the door vertically into the wall (crossing the door's top/bottom row within the wall's
       columns) stops 0.5 px inside the door, returned as is.
    2. Otherwise the first hit among the two vertical faces on p1's side (border or wall face with its
       door) and the two horizontal borders wins; the dot stops 0.5 px short of that face.
    3. The result is clamped between those faces, nudged 0.3 px inward if it sits on one.

    The reference's offset vector is ``(0.5, 0.5)`` with only the normal component signed, so a hit also
    shifts the dot +0.5 px along the face; kept so replays of reference data agree.
    """
    p1, p2 = (float(p1[0]), float(p1[1])), (float(p2[0]), float(p2[1]))
    x_lo, x_hi = wall_x - WALL_HALF_WIDTH, wall_x + WALL_HALF_WIDTH
    door_lo, door_hi = door_y - DOOR_HALF_HEIGHT, door_y + DOOR_HALF_HEIGHT
    dy = p2[1] - p1[1]
    if dy > 0 and p2[1] > door_hi and p1[1] < door_hi:
        x = _x_at_row(p1, p2, door_hi)
        if x_lo <= x <= x_hi:
            return x + CONTACT_OFFSET, door_hi - CONTACT_OFFSET
    if dy < 0 and p2[1] < door_lo and p1[1] > door_lo:
        x = _x_at_row(p1, p2, door_lo)
        if x_lo <= x <= x_hi:
            return x + CONTACT_OFFSET, door_lo + CONTACT_OFFSET

    if wall_x > p1[0]:
        left, left_door, right, right_door = BORDER_LO, None, x_lo, door_y
    else:
        left, left_door, right, right_door = x_hi, door_y, BORDER_HI, None
    v_hit = _vertical_hit(p1, p2, left, left_door) or _vertical_hit(p1, p2, right, right_door)
    h_hit = _horizontal_hit(p1, p2, BORDER_LO) or _horizontal_hit(p1, p2, BORDER_HI)
    if v_hit is None and h_hit is None:
        return p2
    use_vertical = v_hit is not None and (
        h_hit is None or math.dist(p1, v_hit) < math.dist(p1, h_hit)  # ties go to the horizontal hit
    )
    if use_vertical:
        x, y = v_hit[0] + CONTACT_OFFSET * _sign(p1[0] - v_hit[0]), v_hit[1] + CONTACT_OFFSET
    else:
        x, y = h_hit[0] + CONTACT_OFFSET, h_hit[1] + CONTACT_OFFSET * _sign(p1[1] - h_hit[1])
    x, y = min(max(x, left), right), min(max(y, BORDER_LO), BORDER_HI)
    if x <= left:
        x = left + WALL_NUDGE
    if x >= right:
        x = right - WALL_NUDGE
    if y <= BORDER_LO:
        y = BORDER_LO + WALL_NUDGE
    if y >= BORDER_HI:
        y = BORDER_HI - WALL_NUDGE
    return x, y


# ---- rendering --------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of antialiased bilinear resampling (torchvision ``Resize``, antialias=True).

    A triangle filter stretched by the downscale factor (identity stretch when upsampling), centred on
    ``(i + 0.5) * n_in / n_out`` and renormalized at the borders.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    taps = np.arange(n_in) + 0.5
    w = np.clip(1.0 - np.abs(taps[None, :] - centers[:, None]) / support, 0.0, None)
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    w.setflags(write=False)
    return w


def wall_mask(wall_x: int, door_y: int) -> np.ndarray:
    """(65, 65) bool, indexed [row=y, col=x]: borders, and the wall minus its door."""
    idx = np.arange(WORLD_SIZE)
    cols = (idx >= wall_x - WALL_HALF_WIDTH) & (idx <= wall_x + WALL_HALF_WIDTH)
    rows = (idx < door_y - DOOR_HALF_HEIGHT) | (idx > door_y + DOOR_HALF_HEIGHT)
    mask = rows[:, None] & cols[None, :]
    for line in (int(BORDER_LO), int(BORDER_HI)):
        mask[:, line] = True
        mask[line, :] = True
    return mask


def dot_intensity(pos: np.ndarray) -> np.ndarray:
    """(65, 65) uint8 red intensity of the dot at ``pos`` = (x, y), peak-normalized over the grid."""
    idx = np.arange(WORLD_SIZE, dtype=np.float64)
    gx = np.exp(-((idx - pos[0]) ** 2) / (2 * DOT_STD**2))
    gy = np.exp(-((idx - pos[1]) ** 2) / (2 * DOT_STD**2))
    dot = np.outer(gy / gy.max(), gx / gx.max())  # the Gaussian is separable
    return (dot * 255).astype(np.uint8)  # the reference truncates the intensity to uint8


def render_world(pos: np.ndarray | None, walls: np.ndarray) -> np.ndarray:
    """(65, 65, 3) uint8 frame: white, black walls, the dot (if ``pos``) fading green and blue."""
    frame = np.full((WORLD_SIZE, WORLD_SIZE, 3), 255, dtype=np.uint8)
    if pos is not None:
        fade = 255 - dot_intensity(pos)
        frame[..., 1] = fade
        frame[..., 2] = fade
    frame[walls] = 0
    return frame


def _resize_float(frame: np.ndarray, size: int) -> np.ndarray:
    """(h, w, c) -> (size, size, c) float32, antialiased bilinear."""
    rows, cols = resize_matrix(frame.shape[0], size), resize_matrix(frame.shape[1], size)
    out = np.tensordot(rows, frame.astype(np.float32), axes=(1, 0))  # (size, w, c)
    return np.ascontiguousarray(np.tensordot(out, cols, axes=(1, 1)).transpose(0, 2, 1))  # (size, size, c)


@lru_cache(maxsize=64)
def _background(wall_x: int, door_y: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resized layout without the dot -> (float32, uint8), read-only; cached because every reset sets it.

    The resize is linear, so a frame = resized background + resized dot (the dot covers ~13 x 13 px).
    """
    background = _resize_float(render_world(None, wall_mask(wall_x, door_y)), size)
    as_u8 = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    for a in (background, as_u8):
        a.setflags(write=False)
    return background, as_u8


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of an (h, w, 3) uint8 frame to (size, size, 3) uint8."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.clip(np.rint(_resize_float(frame, size)), 0, 255).astype(np.uint8)


# ---- the env ----------------------------------------------------------------------------------------
def _as_pixel(name: str, value: Any) -> int:
    v = float(value)
    if not v.is_integer():
        raise ValueError(f"wall: {name} must be a whole pixel index, got {value!r}")
    return int(v)


class WallEnv(PlanningEnv):
    """Dot-and-wall env; ``env_params`` = ``{"wall_x", "door_y"}`` (defaults 32 / 30)."""

    env_name = "wall"
    state_dim = 2
    proprio_dim = 2
    action_dim = 2

    def __init__(
        self,
        img_size: int = 224,
        wall_x: int = DEFAULT_WALL_X,
        door_y: int = DEFAULT_DOOR_Y,
        render_mode: str | None = "rgb_array",
    ) -> None:
        super().__init__(img_size=img_size, render_mode=render_mode)
        self.action_space = spaces.Box(-ACTION_BOUND, ACTION_BOUND, (self.action_dim,), np.float32)
        self.set_env_params({"wall_x": wall_x, "door_y": door_y})
        self._pos = self._random_free_state(np.random.default_rng(0))

    # ---- layout ---------------------------------------------------------------------------------
    @property
    def env_params(self) -> dict[str, Any]:
        return {"wall_x": self.wall_x, "door_y": self.door_y}

    def set_env_params(self, params: dict[str, Any]) -> None:
        unknown = set(params) - {"wall_x", "door_y"}
        if unknown:
            raise ValueError(f"wall: unknown env params {sorted(unknown)} (known: wall_x, door_y)")
        wall_x = _as_pixel("wall_x", params.get("wall_x", getattr(self, "wall_x", DEFAULT_WALL_X)))
        door_y = _as_pixel("door_y", params.get("door_y", getattr(self, "door_y", DEFAULT_DOOR_Y)))
        (left_lo, left_hi), (right_lo, right_hi) = self._side_ranges(wall_x)
        if left_hi <= left_lo or right_hi <= right_lo:
            raise ValueError(f"wall: wall_x={wall_x} leaves no room to sample a state on both sides")
        if not BORDER_LO < door_y - DOOR_HALF_HEIGHT < door_y + DOOR_HALF_HEIGHT < BORDER_HI:
            raise ValueError(f"wall: door_y={door_y} puts the door outside the borders")
        self.wall_x, self.door_y = wall_x, door_y
        self._walls = wall_mask(wall_x, door_y)
        self._background, self._background_u8 = _background(wall_x, door_y, self.img_size)

    # ---- state ----------------------------------------------------------------------------------
    def _set_state(self, state: np.ndarray) -> None:
        self._pos = np.array(state, dtype=np.float64)

    def get_state(self) -> np.ndarray:
        return self._pos.copy()

    def get_proprio(self) -> np.ndarray:
        return self._pos.copy()

    @staticmethod
    def _side_ranges(wall_x: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """x ranges left and right of the wall where the reference samples states."""
        left = (SAMPLE_BORDER_PADDING, wall_x - WALL_HALF_WIDTH - SAMPLE_PADDING)
        right = (wall_x + WALL_HALF_WIDTH + SAMPLE_PADDING, WORLD_SIZE - 1 - SAMPLE_BORDER_PADDING)
        return left, right

    def _random_free_state(self, rng: np.random.Generator) -> np.ndarray:
        """A point on a random side of the wall, with the reference's sampling margins."""
        left, right = self._side_ranges(self.wall_x)
        x_range = left if rng.random() < 0.5 else right
        return np.array([rng.uniform(*x_range), rng.uniform(*Y_RANGE)])

    def _random_state(self) -> np.ndarray:
        return self._random_free_state(self.np_random)

    def _step_dynamics(self, action: np.ndarray) -> dict[str, Any]:
        self._pos = np.array(collide(self._pos, self._pos + STEP_SCALE * action, self.wall_x, self.door_y))
        return {}

    # ---- observation, evaluation ----------------------------------------------------------------
    def render(self) -> np.ndarray:
        """Same frame as ``resize_frame(render_world(pos, walls), img_size)`` (up to float rounding)."""
        frame = self._background_u8.copy()
        dot = dot_intensity(self._pos)
        dot[self._walls] = 0
        ys, xs = np.flatnonzero(dot.any(axis=1)), np.flatnonzero(dot.any(axis=0))
        if ys.size == 0:  # the dot is out of view
            return frame
        weights = resize_matrix(WORLD_SIZE, self.img_size)
        row_w, col_w = weights[:, ys[0] : ys[-1] + 1], weights[:, xs[0] : xs[-1] + 1]
        out_ys, out_xs = np.flatnonzero(row_w.any(axis=1)), np.flatnonzero(col_w.any(axis=1))
        out_rows, out_cols = slice(out_ys[0], out_ys[-1] + 1), slice(out_xs[0], out_xs[-1] + 1)
        window = dot[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].astype(np.float32)
        fade = row_w[out_rows] @ window @ col_w[out_cols].T  # (h', w') resized dot intensity
        green_blue = self._background[out_rows, out_cols, 1:] - fade[..., None]
        frame[out_rows, out_cols, 1:] = np.clip(np.rint(green_blue), 0, 255).astype(np.uint8)
        return frame

    def eval_state(self, goal_state: np.ndarray, state: np.ndarray) -> dict[str, Any]:
        distance = float(np.linalg.norm(np.asarray(goal_state)[:2] - np.asarray(state)[:2]))
        return {"success": distance < SUCCESS_RADIUS, "distance": distance}

    def sample_init_goal(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Reference ``generate_random_state``: start left of the wall, goal right of it, swapped w.p. 0.5.

        Uses this instance's current wall (the reference kept the x of the wall it was built with).
        """
        rs = np.random.RandomState(seed)
        left, right = self._side_ranges(self.wall_x)
        start_x, goal_x = rs.uniform(*left), rs.uniform(*right)
        start_y, goal_y = rs.uniform(*Y_RANGE), rs.uniform(*Y_RANGE)
        if rs.uniform(0, 1) < 0.5:
            start_x, goal_x = goal_x, start_x
        return np.array([start_x, start_y]), np.array([goal_x, goal_y])

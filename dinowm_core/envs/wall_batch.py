"""The Wall dynamics for many dots at once: :func:`collide` and :meth:`WallEnv.step` vectorized in numpy.

Used to plan with the true simulator as the "world model" (``bench/planners.py``), which separates a planner's
search power from the learned model's error. Every branch of :func:`dinowm_core.envs.wall.collide` is an
``np.where`` over rows, evaluated in the same floating-point order, so a batched step equals M scalar steps
(tested on random moves, including wall, door and border contacts).
"""

from __future__ import annotations

import numpy as np

from dinowm_core.envs.wall import (
    BORDER_HI,
    BORDER_LO,
    CONTACT_OFFSET,
    DOOR_HALF_HEIGHT,
    STEP_SCALE,
    WALL_HALF_WIDTH,
    WALL_NUDGE,
)


def _x_at_row(x1, y1, x2, y2, row):
    dx, dy = x2 - x1, y2 - y1
    flat = (dx == 0.0) | (dy == 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = dy / np.where(flat, 1.0, dx)
        b = y1 - a * x1
        x = (row - b) / np.where(flat, 1.0, a)
    return np.where(flat, x1, x)


def _y_at_col(x1, y1, x2, y2, col):
    dx, dy = x2 - x1, y2 - y1
    with np.errstate(divide="ignore", invalid="ignore"):
        a = dy / np.where(dx == 0.0, 1.0, dx)
        b = y1 - a * x1
    return np.where(dx == 0.0, y1, a * col + b)


def _vertical_hit(x1, y1, x2, y2, col, door_y, has_door):
    """-> (hit (M,) bool, y (M,)) for the line x = col (with a door where ``has_door``)."""
    hit = np.sign(x1 - col) * np.sign(x2 - col) <= 0
    y = _y_at_col(x1, y1, x2, y2, col)
    through_door = has_door & (door_y - DOOR_HALF_HEIGHT <= y) & (y <= door_y + DOOR_HALF_HEIGHT)
    return hit & ~through_door, y


def _horizontal_hit(x1, y1, x2, y2, row):
    hit = np.sign(y1 - row) * np.sign(y2 - row) <= 0
    return hit, _x_at_row(x1, y1, x2, y2, row)


def collide_batch(p1: np.ndarray, p2: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray) -> np.ndarray:
    """p1, p2 (M, 2) float64 [x, y]; wall_x, door_y (M,) or scalars -> (M, 2) where each dot ends up."""
    x1, y1, x2, y2 = p1[:, 0], p1[:, 1], p2[:, 0], p2[:, 1]
    wall_x = np.broadcast_to(np.asarray(wall_x, np.float64), x1.shape)
    door_y = np.broadcast_to(np.asarray(door_y, np.float64), x1.shape)
    x_lo, x_hi = wall_x - WALL_HALF_WIDTH, wall_x + WALL_HALF_WIDTH
    door_lo, door_hi = door_y - DOOR_HALF_HEIGHT, door_y + DOOR_HALF_HEIGHT
    dy = y2 - y1
    # ---- 1. leaving the door vertically into the wall ----
    x_top = _x_at_row(x1, y1, x2, y2, door_hi)
    up = (dy > 0) & (y2 > door_hi) & (y1 < door_hi) & (x_lo <= x_top) & (x_top <= x_hi)
    x_bot = _x_at_row(x1, y1, x2, y2, door_lo)
    down = ~up & (dy < 0) & (y2 < door_lo) & (y1 > door_lo) & (x_lo <= x_bot) & (x_bot <= x_hi)
    # ---- 2. the first hit among the faces on p1's side and the borders ----
    left_side = wall_x > x1
    left = np.where(left_side, BORDER_LO, x_hi)
    right = np.where(left_side, x_lo, BORDER_HI)
    hit_l, y_l = _vertical_hit(x1, y1, x2, y2, left, door_y, ~left_side)
    hit_r, y_r = _vertical_hit(x1, y1, x2, y2, right, door_y, left_side)
    v_hit, v_x, v_y = hit_l | hit_r, np.where(hit_l, left, right), np.where(hit_l, y_l, y_r)
    hit_lo, x_at_lo = _horizontal_hit(x1, y1, x2, y2, BORDER_LO)
    hit_hi, x_at_hi = _horizontal_hit(x1, y1, x2, y2, BORDER_HI)
    h_hit, h_x, h_y = (
        hit_lo | hit_hi,
        np.where(hit_lo, x_at_lo, x_at_hi),
        np.where(hit_lo, BORDER_LO, BORDER_HI),
    )
    d_v = np.sqrt((v_x - x1) ** 2 + (v_y - y1) ** 2)
    d_h = np.sqrt((h_x - x1) ** 2 + (h_y - y1) ** 2)
    use_v = v_hit & (~h_hit | (d_v < d_h))
    x = np.where(use_v, v_x + CONTACT_OFFSET * np.sign(x1 - v_x), h_x + CONTACT_OFFSET)
    y = np.where(use_v, v_y + CONTACT_OFFSET, h_y + CONTACT_OFFSET * np.sign(y1 - h_y))
    # ---- 3. clamp between the faces, nudged inward ----
    x, y = np.minimum(np.maximum(x, left), right), np.minimum(np.maximum(y, BORDER_LO), BORDER_HI)
    x = np.where(x <= left, left + WALL_NUDGE, x)
    x = np.where(x >= right, right - WALL_NUDGE, x)
    y = np.where(y <= BORDER_LO, BORDER_LO + WALL_NUDGE, y)
    y = np.where(y >= BORDER_HI, BORDER_HI - WALL_NUDGE, y)
    out = np.where((v_hit | h_hit)[:, None], np.stack([x, y], axis=1), p2)
    out = np.where(up[:, None], np.stack([x_top + CONTACT_OFFSET, door_hi - CONTACT_OFFSET], axis=1), out)
    return np.where(down[:, None], np.stack([x_bot + CONTACT_OFFSET, door_lo + CONTACT_OFFSET], axis=1), out)


def step_batch(pos: np.ndarray, action: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray) -> np.ndarray:
    """pos (M, 2), action (M, 2) env units -> next pos (M, 2): ``WallEnv.step`` for M dots."""
    pos = np.asarray(pos, np.float64)
    return collide_batch(pos, pos + STEP_SCALE * np.asarray(action, np.float64), wall_x, door_y)

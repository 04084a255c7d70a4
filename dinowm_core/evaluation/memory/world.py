"""Scripted motion and views in ``four_rooms`` for the memory tasks: BFS walks, the cells in view, the states
that look at an object, and frames rendered in another version of the same world (an object recoloured or
objects swapped), so a task can check in pixels what a model could and could not have seen."""

from __future__ import annotations

from typing import Any

import numpy as np

from dinowm_core.data.four_rooms_policies import next_action
from dinowm_core.envs.four_rooms import DIR_VEC, FORWARD, LEFT, RIGHT, FourRoomsEnv, bfs_distances

State = tuple[int, int, int]


def step_state(blocked: np.ndarray, state: State, action: int) -> State:
    """The env's dynamics on a plain (x, y, dir) tuple (no render)."""
    x, y, d = state
    if action == LEFT:
        return (x, y, (d - 1) % 4)
    if action == RIGHT:
        return (x, y, (d + 1) % 4)
    nx, ny = x + DIR_VEC[d][0], y + DIR_VEC[d][1]
    return (nx, ny, d) if not blocked[nx, ny] else state


def walk(blocked: np.ndarray, state: State, cell: tuple[int, int], final_dir: int | None = None) -> list[int]:
    """Shortest-path actions from ``state`` to ``cell`` (then turns to ``final_dir``); [] if already there."""
    actions: list[int] = []
    for _ in range(4 * blocked.size):
        a = next_action(blocked, np.array(state), cell)
        if a is None:
            break
        actions.append(a)
        state = step_state(blocked, state, a)
    if (state[0], state[1]) != tuple(cell):
        raise ValueError(f"no path from {state} to {cell}")
    if final_dir is not None:
        turn = (final_dir - state[2]) % 4
        actions += [RIGHT] * turn if turn <= 2 else [LEFT]
    return actions


def replay(blocked: np.ndarray, state: State, actions: list[int]) -> list[State]:
    """The states visited by ``actions`` from ``state`` (the start included): len(actions) + 1 states."""
    states = [state]
    for a in actions:
        states.append(step_state(blocked, states[-1], a))
    return states


def visible_cells(env: FourRoomsEnv, state: State) -> set[tuple[int, int]]:
    """World cells in the agent's view from ``state`` (walls occlude, as the rendered frame)."""
    env._set_state(np.array(state, np.float64))
    _, vis = env.sim.gen_obs_grid()
    out = set()
    for i, j in np.argwhere(vis):
        x, y = _world_coords(env, int(i), int(j))
        if 0 <= x < env.blocked.shape[0] and 0 <= y < env.blocked.shape[1]:
            out.add((x, y))
    return out


def _world_coords(env: FourRoomsEnv, i: int, j: int) -> tuple[int, int]:
    """View-grid (i, j) -> world (x, y) (MiniGrid: the agent at (view // 2, view - 1), facing up)."""
    sim = env.sim
    view = sim.agent_view_size
    fx, fy = DIR_VEC[sim.agent_dir]
    rx, ry = -fy, fx  # the agent's right
    ax, ay = sim.agent_pos
    forward, right = view - 1 - j, i - view // 2
    return ax + forward * fx + right * rx, ay + forward * fy + right * ry


def view_state(env: FourRoomsEnv, cell: tuple[int, int], rng: np.random.Generator) -> State | None:
    """A free state one or two cells from ``cell`` facing it, from which ``cell`` is in view (random among
    the valid ones), or None."""
    options = []
    for d, (dx, dy) in enumerate(DIR_VEC):
        for k in (2, 1):
            x, y = cell[0] - k * dx, cell[1] - k * dy
            between_free = all(not env.blocked[cell[0] - i * dx, cell[1] - i * dy] for i in range(1, k + 1))
            if 0 < x < env.blocked.shape[0] - 1 and 0 < y < env.blocked.shape[1] - 1 and between_free:
                options.append((x, y, d))
    rng.shuffle(options)
    for s in options:
        if tuple(cell) in visible_cells(env, s):
            return tuple(int(v) for v in s)
    return None


def render_states(env: FourRoomsEnv, params: dict[str, Any], states: list[State]) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of ``states`` in the world ``params`` (the env is left in that world)."""
    env.set_env_params(params)
    frames = []
    for s in states:
        env._set_state(np.array(s, np.float64))
        frames.append(env.render())
    return np.stack(frames)


def distances_from(blocked: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    return bfs_distances(blocked, (int(cell[0]), int(cell[1])))


__all__ = ["FORWARD", "State", "distances_from", "render_states", "replay", "step_state", "view_state",
           "visible_cells", "walk"]  # fmt: skip

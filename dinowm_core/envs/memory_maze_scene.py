"""Memory-Maze scene pieces: our maze layouts and the memory-maze / dm_control / labmaze parts we build on.

Everything that touches the optional packages is imported in :func:`import_package`, so this module (and
``dinowm_core.envs``) imports without the extra. The planning env is in ``memory_maze.py``.
"""

from __future__ import annotations

import contextlib
import io
import sys
from types import SimpleNamespace

import numpy as np

INSTALL_HINT = "install the memory_maze extra: pip install -e '.[memory_maze]'"
XY_SCALE = 2.0  # metres per maze cell (the package's default)
WALL_HEIGHT = 1.5  # the package's z_height (0.4 in its "good visibility" variants)

#: Fixed layouts (rows top to bottom, with the outer walls). The name is the inner size, rows x columns.
FIXED_LAYOUTS: dict[str, tuple[str, ...]] = {
    # two 3 x 3 rooms joined by a door in the middle row
    "3x7": (
        "*********",
        "*P  *  G*",
        "*       *",
        "*G  *  P*",
        "*********",
    ),
    # four 3 x 3 rooms around a cross of walls, one door in each of its four arms
    "7x7": (
        "*********",
        "*P  *  G*",
        "*   *   *",
        "*       *",
        "** *** **",
        "*G  *   *",
        "*       *",
        "*  P*  G*",
        "*********",
    ),
    # a row of four 7 x 4 rooms; the doors alternate between rows so the way through winds
    "7x19": (
        "*********************",
        "*P   *    *G   *   G*",
        "*    *    *    *    *",
        "*         *    *    *",
        "*    *    *    *    *",
        "*    *G   *         *",
        "*    *    *    *    *",
        "*   G*         *P   *",
        "*********************",
    ),
}
#: the package's 9 x 9 task: inner size 9, at most 6 rooms of 3-5 cells, one spawn and target per room
RANDOM_LAYOUTS: dict[str, dict[str, int]] = {
    "9x9": {"size": 9, "num_targets": 3, "max_rooms": 6, "room_min_size": 3, "room_max_size": 5},
}
LAYOUTS = (*RANDOM_LAYOUTS, *FIXED_LAYOUTS)


def import_package() -> SimpleNamespace:
    """The memory_maze / dm_control / labmaze pieces we build on, or an ImportError naming the extra."""
    try:
        # gym 0.26.2 (imported by memory_maze's __init__) prints an "unmaintained" notice at import; we never
        # use gym, so only that notice is swallowed: anything else it prints is passed on.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                from memory_maze import maze as mm_maze
        finally:
            text = captured.getvalue()
            if text and "Gym has been unmaintained" not in text:
                sys.stderr.write(text)
        import labmaze
        from dm_control import composer
        from dm_control.locomotion.arenas import labmaze_textures
        from dm_control.locomotion.props import target_sphere
    except ImportError as e:
        raise ImportError(f"memory_maze env: {INSTALL_HINT} ({e})") from e
    return SimpleNamespace(
        maze=mm_maze,
        labmaze=labmaze,
        composer=composer,
        textures=labmaze_textures,
        target_sphere=target_sphere,
    )


def check_layout(rows: tuple[str, ...]) -> tuple[int, int]:
    """Validate a layout; return its inner size (rows, columns)."""
    width = len(rows[0])
    if len(rows) < 3 or any(len(r) != width for r in rows):
        raise ValueError("layout rows must have equal length (and at least 3 rows)")
    unknown = set("".join(rows)) - set("* PG0123456789")
    if unknown:
        raise ValueError(f"layout has unknown characters {sorted(unknown)} (walls * or 0-9, floor ' ', P, G)")
    border = rows[0] + rows[-1] + "".join(r[0] + r[-1] for r in rows)
    if set(border) - set("*0123456789"):
        raise ValueError("a layout must be enclosed by walls")
    return len(rows) - 2, width - 2


def vary_walls(rows: tuple[str, ...]) -> tuple[str, ...]:
    """Mark the walls of each cell of a 3 x 3 grid over the maze with its own digit (as the package's
    ``TextMazeVaryingWalls``): each digit gets its own wall texture, so walls tell regions apart."""
    height, width = len(rows), len(rows[0])
    out = []
    for i, row in enumerate(rows):
        block_row = min(3 * i // height, 2)
        out.append(
            "".join(str(3 * block_row + min(3 * j // width, 2)) if c == "*" else c for j, c in enumerate(row))
        )
    return tuple(out)


def random_layout(
    seed: int, size: int, num_targets: int, **rooms: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A random maze from labmaze with at least ``num_targets`` target cells: ``(entity rows, variation rows)``."""
    pkg = import_package()
    maze = pkg.labmaze.RandomMaze(
        height=size + 2, width=size + 2, max_variations=26, spawns_per_room=1, objects_per_room=1,
        simplify=True, random_seed=int(seed), **rooms,
    )  # fmt: skip
    for _ in range(100):  # the package regenerates mazes with too few rooms for its targets
        entity = tuple(str(maze.entity_layer).splitlines())
        if "".join(entity).count("G") >= num_targets:
            return entity, tuple(str(maze.variations_layer).splitlines())
        maze.regenerate()
    raise RuntimeError(f"maze_seed {seed}: no maze with {num_targets} rooms in 100 tries")


def build_arena_class(pkg: SimpleNamespace) -> type:
    """:class:`FixedLayoutArena`, defined once the package is importable."""
    mazes = pkg.maze.mazes

    class FixedLayoutArena(pkg.maze.MazeWithTargetsArena):
        """The package's maze arena (its floor variations and per-episode wall textures) on a fixed text
        maze; :meth:`set_layout` swaps the maze, and the next composer reset rebuilds the geoms."""

        def _build(self, rows, variations=None, xy_scale=XY_SCALE, z_height=WALL_HEIGHT, **kwargs):  # noqa: ANN001
            # Skip the package's _build (it makes a random labmaze); its parent takes any labmaze maze.
            mazes.MazeWithTargets._build(self, maze=self._text_maze(rows, variations), xy_scale=xy_scale,
                                         z_height=z_height, **kwargs)  # fmt: skip

        @staticmethod
        def _text_maze(rows, variations):  # noqa: ANN001, ANN205
            return pkg.labmaze.FixedMazeWithRandomGoals(
                entity_layer="\n".join(rows) + "\n",
                variations_layer=None if variations is None else "\n".join(variations) + "\n",
                random_state=np.random.RandomState(0),  # all P/G tokens are kept: nothing random is drawn
            )

        def set_layout(self, rows, variations=None) -> None:  # noqa: ANN001
            maze = self._text_maze(rows, variations)
            if (maze.height, maze.width) != (self._maze.height, self._maze.width):
                raise ValueError("set_layout: a new layout must keep the maze size")
            self._maze = maze

    return FixedLayoutArena


def fast_target_class(pkg: SimpleNamespace) -> type:
    """The package's target sphere with its touch test vectorized (same contacts, same substeps).

    dm_control's ``TargetSphere`` walks ``physics.data.contact`` in Python after every physics substep; with 50
    substeps per step and 3 targets that loop was ~85% of a Memory-Maze step.
    """
    base = pkg.target_sphere.TargetSphere

    class FastTargetSphere(base):
        def _update_activation(self, physics) -> None:  # noqa: ANN001
            if self._activated:
                return
            if (physics.data.ptr.contact.geom == self._geom_id).any():  # (ncon, 2) geom ids
                self._activated = True
                physics.bind(self._material).rgba[-1] = 0

    return FastTargetSphere

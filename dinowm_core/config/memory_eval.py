"""The memory evaluation section (``memory_eval.*``, docs/memory.md "Memory evaluation").

The grid is ``tasks x num_objects x horizons``: every task that shows something and later needs it is run for
every object count and every walk-away length, ``episodes`` episodes per cell, episode ``i`` of a cell drawn
from ``SeedSequence([seed, task, num_objects, horizon, i])`` so every model sees the same episodes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dinowm_core.config.base import ConfigModel

#: every task of the suite; ``planning`` is the standard planning evaluation (``memory_plan``)
MEMORY_TASKS = (
    "object_recall",
    "object_goal",
    "colour_memory",
    "sequence_memory",
    "loop_closure",
    "error_horizon",
    "planning",
)
MemoryTask = Literal[MEMORY_TASKS]  # type: ignore[valid-type]  # the tuple above, one list of names


class MemoryEvalConfig(ConfigModel):
    tasks: list[MemoryTask] = Field(
        default_factory=lambda: list(MEMORY_TASKS),
        min_length=1,
        description="the tasks to run (default: all)",
    )
    num_objects: list[int] = Field(
        default_factory=lambda: [2, 3],
        min_length=1,
        description="objects in the world; colour / sequence tasks show all of them, recall shows one",
    )
    horizons: list[int] = Field(
        default_factory=lambda: [12],
        min_length=1,
        description="env steps walked away after the last showing (at least; the walk continues until "
        "everything shown is out of the last num_hist frames)",
    )
    episodes: int = Field(20, gt=0, description="episodes per grid cell (task x num_objects x horizon)")
    seed: int = Field(
        0, ge=0, description="the episode seed root (same seed = same episodes for every model)"
    )
    colors: list[str] = Field(
        default_factory=lambda: ["red", "green", "blue", "purple", "yellow"],
        min_length=2,
        description="object colours, drawn per episode; colour memory has len(colors) candidates",
    )
    error_horizons: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 5, 8, 13, 22, 36, 60, 100],
        min_length=1,
        description="open-loop steps at which the prediction error is read (1 to 100, log-spaced)",
    )
    error_context: int = Field(
        24,
        gt=0,
        description="observed frames before the open-loop rollout (written to memory but the last num_hist)",
    )
    clear_frames: int = Field(
        4,
        gt=0,
        description="frames at the end of the observed part in which nothing shown may be in view (pixel-checked); "
        "must be >= the model's num_hist",
    )
    goal_budget: int = Field(
        30,
        gt=0,
        description="object_goal: env steps the planner has to reach the object's place (every episode's "
        "shortest way fits in it)",
    )
    plan_episodes: int = Field(10, gt=0, description="planning-success episodes (mpc_cem_discrete)")
    plan_budget: int = Field(40, gt=0, description="env steps per planning episode (no early stop)")
    num_videos: int = Field(2, ge=0, description="episode GIFs per model-only task (real | imagined | map)")
    num_actors: int | None = Field(None, gt=0, description="Ray env actors; None = up to the cluster's CPUs")
    cpus_per_actor: float = Field(0.25, gt=0, description="CPUs Ray reserves for each env actor")
    bootstrap: int = Field(1000, gt=0, description="bootstrap resamples for intervals of means")

    @model_validator(mode="after")
    def _check(self) -> MemoryEvalConfig:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"memory_eval.tasks must be distinct, got {self.tasks}")
        if any(not 1 <= n <= 6 for n in self.num_objects):
            raise ValueError(f"memory_eval.num_objects must be in 1..6, got {self.num_objects}")
        if any(h < 1 for h in self.horizons):
            raise ValueError(f"memory_eval.horizons must be >= 1, got {self.horizons}")
        if any(h < 1 for h in self.error_horizons) or sorted(set(self.error_horizons)) != self.error_horizons:
            raise ValueError(
                f"memory_eval.error_horizons must be increasing and >= 1, got {self.error_horizons}"
            )
        return self

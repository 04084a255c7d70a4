"""The memory evaluation suite on ``four_rooms`` (docs/memory.md "Memory evaluation"): scripted episodes that show
something and later need it (:mod:`.episodes`), the model's imagination along known paths (:mod:`.imagine`),
scores with intervals (:mod:`.scores`), the loop (:mod:`.runner`), object recall by planning (:mod:`.goal`) and
planning success (:mod:`.plan`)."""

from dinowm_core.evaluation.memory.episodes import (
    CHOICE_TASKS,
    EPISODE_TASKS,
    EpisodeBuilder,
    EpisodeSpec,
    MemoryEpisode,
)
from dinowm_core.evaluation.memory.goal import GoalRunner
from dinowm_core.evaluation.memory.imagine import ModelImaginer, TruthImaginer
from dinowm_core.evaluation.memory.plan import memory_plan, plan_overrides, plan_summary
from dinowm_core.evaluation.memory.runner import episode_specs, run_memory_eval, score_episode, summarize

__all__ = [
    "CHOICE_TASKS", "EPISODE_TASKS", "EpisodeBuilder", "GoalRunner", "EpisodeSpec", "MemoryEpisode", "ModelImaginer",
    "TruthImaginer", "episode_specs", "memory_plan", "plan_overrides", "plan_summary", "run_memory_eval",
    "score_episode", "summarize",
]  # fmt: skip

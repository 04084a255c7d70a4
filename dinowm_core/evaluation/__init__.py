"""Planning evaluation (reference sections 5.1, 5.2, 5.7): episodes in real envs, goal sources, the evaluation
loop, the env <-> model adapter, policies, typed result records, reports and videos.

``evaluate(wm, cfg)`` runs it in-process; ``run_evaluation`` takes env groups and a policy from anywhere (Ray
actors, a planning service). Planners themselves live in :mod:`dinowm_core.planning`.
"""

from dinowm_core.evaluation.adapter import ModelAdapter, resolve_device
from dinowm_core.evaluation.episodes import EpisodeGroup, EpisodeRunner
from dinowm_core.evaluation.goals import Target, make_targets
from dinowm_core.evaluation.loop import Episodes, check_model_env, evaluate, run_evaluation
from dinowm_core.evaluation.policy import ModelPolicy, Policy, RandomPolicy, build_policy
from dinowm_core.evaluation.records import EpisodeMetrics, EpisodeOutcome
from dinowm_core.evaluation.report import EvalResult, summarize, wilson_interval

__all__ = [
    "EpisodeGroup",
    "EpisodeMetrics",
    "EpisodeOutcome",
    "EpisodeRunner",
    "Episodes",
    "EvalResult",
    "ModelAdapter",
    "ModelPolicy",
    "Policy",
    "RandomPolicy",
    "Target",
    "build_policy",
    "check_model_env",
    "evaluate",
    "make_targets",
    "resolve_device",
    "run_evaluation",
    "summarize",
    "wilson_interval",
]

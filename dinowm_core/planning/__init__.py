"""Planning with a DINO-WM world model: objective, CEM, GD, MPC (reference section 5)."""

from dinowm_core.planning.cem import cem_plan, cem_plan_discrete
from dinowm_core.planning.common import ActionBounds, PlanResult, evaluate_plans, normalized_zero_action
from dinowm_core.planning.gd import gd_plan
from dinowm_core.planning.mpc import MPCPlanner, make_planner
from dinowm_core.planning.objectives import objective
from dinowm_core.planning.rollout import fast_rollout

__all__ = [
    "ActionBounds",
    "MPCPlanner",
    "PlanResult",
    "cem_plan",
    "cem_plan_discrete",
    "evaluate_plans",
    "fast_rollout",
    "gd_plan",
    "make_planner",
    "normalized_zero_action",
    "objective",
]

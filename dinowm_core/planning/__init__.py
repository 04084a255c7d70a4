"""Planning with a DINO-WM world model: one planner interface over CEM, iCEM, MPPI and GD, open loop or MPC (reference
section 5). ``make_planner(cfg.planner, wm).plan(z_obs, z_goal, state) -> (result, state)``."""

from dinowm_core.planning.cem import cem, cem_discrete
from dinowm_core.planning.common import ActionBounds, PlanResult, normalized_zero_action
from dinowm_core.planning.gd import gd
from dinowm_core.planning.icem import icem
from dinowm_core.planning.mppi import mppi
from dinowm_core.planning.noise import colored_noise
from dinowm_core.planning.objectives import objective
from dinowm_core.planning.planner import Planner, PlanState, budget_horizon, make_planner
from dinowm_core.planning.problem import PlanProblem
from dinowm_core.planning.rollout import Rollout

__all__ = [
    "ActionBounds",
    "PlanProblem",
    "PlanResult",
    "PlanState",
    "Planner",
    "Rollout",
    "budget_horizon",
    "cem",
    "cem_discrete",
    "colored_noise",
    "gd",
    "icem",
    "make_planner",
    "mppi",
    "normalized_zero_action",
    "objective",
]

"""``memory_plan``: the planning half of the memory evaluation, i.e. planning success at a fixed step budget.

It is the standard planning evaluation (:func:`dinowm_core.evaluation.loop.evaluate`: the env's planning preset,
for four_rooms ``mpc_cem_discrete`` with start and goal in different rooms, no early stop from the simulator),
sized by ``memory_eval.plan_episodes`` / ``plan_budget`` / ``seed`` so it sits in the same results document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinowm_core.config import Config, MemoryEvalConfig
from dinowm_core.evaluation.report import EvalResult


def plan_overrides(m: MemoryEvalConfig) -> list[str]:
    """The evaluation keys ``memory_plan`` sets on top of the env's planning preset."""
    return [f"eval.n_evals={m.plan_episodes}", f"eval.budget={m.plan_budget}", f"eval.seeds=[{m.seed}]",
            f"eval.n_plot_samples={min(m.num_videos, m.plan_episodes)}"]  # fmt: skip


def plan_summary(result: EvalResult) -> dict[str, Any]:
    s = result.summary()
    planner = result.protocol.get("planner") or {}
    return {"metric": "success_rate", "planner": planner.get("name"), "protocol": result.protocol.get("label"),
            "pooled": {"n": s["n"], "rate": s["success_rate"], "ci95": list(s["success_ci95"])},
            "videos": list(result.videos)}  # fmt: skip


def memory_plan(wm: Any, cfg: Config, out_dir: str | Path | None = None) -> dict[str, Any]:
    """In-process planning success of ``wm`` under ``cfg`` (already the planning config, see
    :func:`plan_overrides`) -> the ``planning`` entry of the memory results."""
    from dinowm_core.evaluation.loop import evaluate

    return plan_summary(evaluate(wm, cfg, out_dir=out_dir))

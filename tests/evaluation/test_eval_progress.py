"""A running evaluation says how far it is: steps, finished episodes, episodes at the goal, time left."""

from __future__ import annotations

import logging

from dinowm_core.evaluation import loop
from dinowm_core.evaluation.loop import evaluate
from tests.evaluation.eval_helpers import check_progress, progress_lines, tiny_cfg, tiny_wm


def test_in_process_evaluation_reports_progress(caplog, monkeypatch):
    monkeypatch.setattr(loop, "PROGRESS_INTERVAL_S", 0.0)  # a line every planning step
    caplog.set_level(logging.INFO, logger=loop.__name__)
    cfg = tiny_cfg("eval.n_evals=2", "eval.budget=50", "eval.seeds=[0,1]")
    result = evaluate(tiny_wm(cfg), cfg)
    check_progress(progress_lines(caplog), result, [0, 1], 2, steps=2)  # 50 env steps / (5 x 5) per step
    assert any("seed 1: planning 2 episodes of 50 env steps" in r.getMessage() for r in caplog.records)


def test_progress_lines_wait_for_the_interval(caplog, monkeypatch):
    monkeypatch.setattr(loop, "PROGRESS_INTERVAL_S", 3600.0)
    caplog.set_level(logging.INFO, logger=loop.__name__)
    cfg = tiny_cfg("eval.n_evals=1", "eval.budget=50", "eval.seeds=[0]")
    evaluate(tiny_wm(cfg), cfg)
    assert progress_lines(caplog) == []

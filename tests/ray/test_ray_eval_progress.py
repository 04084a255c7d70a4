"""Env actors report progress through the same lines as the in-process evaluation."""

from __future__ import annotations

import logging

import pytest

from dinowm_core.evaluation import loop
from tests.evaluation.eval_helpers import check_progress, progress_lines, tiny_cfg, tiny_wm

pytestmark = pytest.mark.ray


def test_env_actors_report_progress(ray_cluster, caplog, monkeypatch):
    from ray_jobs.evaluate import evaluate_on_ray

    monkeypatch.setattr(loop, "PROGRESS_INTERVAL_S", 0.0)  # a line every planning step
    caplog.set_level(logging.INFO, logger=loop.__name__)
    cfg = tiny_cfg("eval.n_evals=3", "eval.budget=50", "eval.seeds=[0]", "eval.num_actors=2")
    result = evaluate_on_ray(None, cfg, wm=tiny_wm(cfg))
    check_progress(progress_lines(caplog), result, [0], 3, steps=2)

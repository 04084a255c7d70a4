"""Sweep reports: ranking, the text table, results files that round-trip exactly, plots and the CI pick."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from ray_jobs.tune_report import (
    TrialRecord,
    pick_cheapest_within_ci,
    plot_learning_curves,
    plot_metric_vs_params,
    plot_success_vs_cost,
    rank,
    read_results,
    results_table,
    write_results,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _trial(tid: str, metric: float | None, status: str = "TERMINATED", **kw) -> TrialRecord:
    params = kw.pop("params", {"training.predictor_lr": 1e-3, "predictor.depth": 4})
    return TrialRecord(trial_id=tid, params=params, status=status, metric=metric, **kw)


@pytest.fixture
def sweep() -> list[TrialRecord]:
    return [
        _trial(
            "t3",
            0.20,
            "STOPPED_EARLY",
            params={"training.predictor_lr": 3e-4, "predictor.depth": 6},
            time_s=5.0,
            iterations=2,
            history=[(0.0, 0.9), (100.0, 0.2)],
        ),  # fmt: skip
        _trial(
            "t1",
            0.50,
            params={"training.predictor_lr": 1e-3, "predictor.depth": 4, "model.causal": True},
            time_s=12.34,
            iterations=3,
            history=[(0.0, 1.0), (100.0, 0.7), (200.0, 0.5)],
            extra={"val/loss": 0.125},
            checkpoint="/ckpt/t1",
            mlflow_run_id="abc",
        ),  # fmt: skip
        _trial(
            "t5",
            None,
            "ERROR",
            params={"training.predictor_lr": 1e-2, "predictor.depth": 2},
            history=[(0.0, 1.2)],
        ),  # fmt: skip
        _trial("t4", float("nan"), "RUNNING"),
        _trial(
            "t2",
            0.20,
            params={"training.predictor_lr": 1e-4, "predictor.depth": 6},
            time_s=30.0,
            extra={"val/loss": 0.5},
            history=[(0.0, 0.8), (100.0, 0.4), (200.0, 0.2)],
        ),  # fmt: skip
    ]


def _ids(records: list[TrialRecord]) -> list[str]:
    return [r.trial_id for r in records]


# ---- rank ---------------------------------------------------------------------------------------------


def test_rank_min_and_max_put_missing_metrics_last_and_break_ties_by_id(sweep):
    assert _ids(rank(sweep, "min")) == ["t2", "t3", "t1", "t4", "t5"]
    assert _ids(rank(sweep, "max")) == ["t1", "t2", "t3", "t4", "t5"]
    assert rank([], "min") == []


def test_rank_rejects_an_unknown_mode(sweep):
    with pytest.raises(ValueError, match="'best'"):
        rank(sweep, "best")


# ---- table --------------------------------------------------------------------------------------------


def _split(table: str) -> tuple[list[str], list[list[str]]]:
    """Cells cut at the column starts the dashed rule shows, and asserts the rest of each line is blank there."""
    lines = table.splitlines()
    rule = lines[1]
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    bounds = [*starts, None]
    rows = []
    for line in [lines[0], *lines[2:]]:
        assert line == line.rstrip()
        for s in starts[1:]:
            if s < len(line):
                assert line[s - 2 : s] == "  ", f"a cell runs into the column at {s}: {line!r}"
        rows.append([line[a:b].strip() for a, b in zip(bounds, bounds[1:], strict=False)])
    return lines, rows


def test_results_table_marks_the_best_orders_rows_and_aligns_columns(sweep):
    table = results_table(sweep, "val/psnr", "max", columns=["val/loss", "plan/success_rate"])
    lines, rows = _split(table)
    header = rows[0]
    # The params' shortest unambiguous names, sorted by full key (model.causal, predictor.depth, training.predictor_lr).
    assert header == ["trial", "causal", "depth", "predictor_lr", "val/psnr", "val/loss", "plan/success_rate",
                      "status", "time"]  # fmt: skip
    assert [r[0] for r in rows[1:]] == ["t1*", "t2", "t3", "t4", "t5"]
    t1, t2, t3, t4, t5 = rows[1:]
    assert t1 == ["t1*", "true", "4", "0.001", "0.5", "0.125", "", "TERMINATED", "12.3s"]
    assert t2[:6] == ["t2", "", "6", "0.0001", "0.2", "0.5"]
    assert t3[-2:] == ["STOPPED_EARLY", "5.0s"]
    assert t4[4] == "nan" and t4[-1] == ""
    assert t5[4] == "" and t5[-2:] == ["ERROR", ""]
    assert set(lines[1]) == {"-", " "}
    assert all(line == line.rstrip() for line in lines)


def test_results_table_keeps_full_keys_that_would_collide_and_honours_best_id():
    records = [
        _trial("a", 1.0, params={"predictor.depth": 4, "decoder.depth": 2}),
        _trial("b", 2.0, params={"predictor.depth": 6, "decoder.depth": 3}),
    ]
    _, rows = _split(results_table(records, "loss", "min", best_id="b"))
    assert rows[0][:3] == ["trial", "decoder.depth", "predictor.depth"]
    assert [r[0] for r in rows[1:]] == ["a", "b*"]


def test_results_table_without_any_metric_marks_nothing_and_bad_mode_raises():
    records = [_trial("a", None, "PENDING"), _trial("b", None, "PENDING")]
    assert "*" not in results_table(records, "loss", "min")
    with pytest.raises(ValueError, match="'average'"):
        results_table(records, "loss", "average")


# ---- files --------------------------------------------------------------------------------------------


def test_write_and_read_results_round_trip_exactly(sweep, tmp_path):
    finite = [r for r in sweep if r.trial_id != "t4"]  # NaN != NaN, so t4 is checked on its own below
    out = tmp_path / "sweep" / "report"
    path = write_results(finite, out, "val/loss", "min")
    assert path == out / "results.json"
    metric, mode, back = read_results(path)
    assert (metric, mode) == ("val/loss", "min")
    assert back == rank(finite, "min")
    assert read_results(out)[2] == back  # the directory works too
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json"]  # no temp files left

    doc = json.loads(path.read_text())
    assert [t["trial_id"] for t in doc["trials"]] == ["t2", "t3", "t1", "t5"]


def test_results_files_hold_nan_as_null_and_the_csv_has_one_row_per_trial(sweep, tmp_path):
    path = write_results(sweep, tmp_path, "val/loss", "min")
    assert "NaN" not in path.read_text()
    _, _, back = read_results(path)
    t4 = next(r for r in back if r.trial_id == "t4")
    assert t4.metric is None and t4.status == "RUNNING"

    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    # t1 and t2 also carry "val/loss" in extra: the metric's column is not repeated.
    assert rows[0] == ["trial_id", "status", "val/loss", "model.causal", "predictor.depth", "training.predictor_lr",
                       "time_s", "iterations", "checkpoint", "mlflow_run_id"]  # fmt: skip
    assert len(rows) == 1 + len(sweep)
    assert [r[0] for r in rows[1:]] == ["t2", "t3", "t1", "t4", "t5"]
    t1 = rows[3]
    assert t1[:3] == ["t1", "TERMINATED", "0.5"] and t1[-4:] == ["12.34", "3", "/ckpt/t1", "abc"]


def test_to_dict_is_strict_json():
    r = _trial("x", float("inf"), extra={"a": float("nan")}, history=[(0, float("nan"))])
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["metric"] is None and d["extra"] == {"a": None} and d["history"] == [[0, None]]
    back = TrialRecord.from_dict(d)
    assert math.isnan(back.extra["a"]) and math.isnan(back.history[0][1])


# ---- plots --------------------------------------------------------------------------------------------


def _assert_png_with_content(path: Path | None) -> None:
    from PIL import Image

    assert path is not None and path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        bands = im.convert("RGB").getextrema()
    assert all(lo < hi for lo, hi in bands), f"a flat image: {bands}"


def test_plots_write_pngs_with_content_and_leave_no_pyplot_figures(sweep, tmp_path):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    _assert_png_with_content(
        plot_metric_vs_params(
            sweep, "val/loss", tmp_path / "a" / "params.png", log_keys={"training.predictor_lr"}
        )
    )
    _assert_png_with_content(plot_learning_curves(sweep, "val/loss", tmp_path / "curves.png"))
    planner = [
        _trial("p1", 0.90, extra={"time_per_plan_s": 2.0, "success_ci_low": 0.80, "success_ci_high": 0.96}),
        _trial("p2", 0.84, extra={"time_per_plan_s": 0.5, "success_ci_low": 0.72, "success_ci_high": 0.92}),
        _trial("p3", 0.60, "STOPPED_EARLY", extra={"time_per_plan_s": 0.1}),
    ]
    _assert_png_with_content(plot_success_vs_cost(planner, tmp_path / "cost.png"))
    assert plt.get_fignums() == open_before


def test_learning_curves_handle_more_trials_than_the_legend_shows(tmp_path):
    many = [_trial(f"t{i:02d}", 1.0 / (i + 1), history=[(0.0, 1.0), (1.0, 1.0 / (i + 1))]) for i in range(15)]
    _assert_png_with_content(plot_learning_curves(many, "loss", tmp_path / "many.png", x_label="report"))


def test_plots_return_none_and_write_nothing_without_data(tmp_path):
    no_metric = [_trial("a", None, "ERROR"), _trial("b", 0.5, params={})]
    assert plot_metric_vs_params(no_metric, "loss", tmp_path / "p.png") is None
    assert plot_learning_curves(no_metric, "loss", tmp_path / "c.png") is None
    assert plot_success_vs_cost(no_metric, tmp_path / "s.png") is None
    assert plot_metric_vs_params([], "loss", tmp_path / "p.png") is None
    assert list(tmp_path.iterdir()) == []


# ---- cheapest within the best's CI ----------------------------------------------------------------------


def _planner(tid: str, success: float, cost: float | None, ci_low: float | None = None) -> TrialRecord:
    extra = {} if cost is None else {"time_per_plan_s": cost}
    if ci_low is not None:
        extra["success_ci_low"] = ci_low
    return _trial(tid, success, params={"planner.num_samples": 100}, extra=extra)


def test_pick_cheapest_within_ci_takes_a_cheaper_trial_inside_the_interval():
    records = [
        _planner("best", 0.90, 4.0, ci_low=0.80),
        _planner("inside", 0.82, 1.0),
        _planner("inside_dearer", 0.85, 2.0),
        _planner("outside", 0.70, 0.1),  # cheaper still, but below the best's lower bound
        _planner("no_cost", 0.88, None),
    ]
    assert pick_cheapest_within_ci(records).trial_id == "inside"


def test_pick_cheapest_within_ci_ignores_a_cheaper_trial_outside_the_interval():
    records = [_planner("best", 0.90, 4.0, ci_low=0.80), _planner("outside", 0.79, 0.1)]
    assert pick_cheapest_within_ci(records).trial_id == "best"


def test_pick_cheapest_within_ci_returns_the_best_without_a_ci_and_none_without_metrics():
    records = [_planner("best", 0.90, 4.0), _planner("close", 0.89, 0.1)]
    assert pick_cheapest_within_ci(records).trial_id == "best"
    assert pick_cheapest_within_ci([]) is None
    assert pick_cheapest_within_ci([_trial("x", None, "ERROR")]) is None


def test_pick_cheapest_within_ci_breaks_a_tie_for_best_by_cost_then_id():
    records = [_planner("b", 0.9, 2.0), _planner("a", 0.9, 2.0), _planner("c", 0.9, 1.0)]
    assert pick_cheapest_within_ci(records).trial_id == "c"
    assert pick_cheapest_within_ci(records[:2]).trial_id == "a"


def test_pick_cheapest_within_ci_reads_the_metric_from_extra_when_reported_there():
    # A sweep tuned on another metric: the records' metric field is a loss, success is in extra.
    records = [
        _trial("a", 0.1, extra={"success_rate": 0.9, "success_ci_low": 0.8, "time_per_plan_s": 3.0}),
        _trial("b", 0.2, extra={"success_rate": 0.85, "time_per_plan_s": 1.0}),
        _trial("c", 0.05, extra={"success_rate": 0.5, "time_per_plan_s": 0.1}),
    ]
    assert pick_cheapest_within_ci(records).trial_id == "b"

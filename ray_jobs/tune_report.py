"""What did a hyperparameter sweep find? Its trials ranked, as a text table, as files and as plots.

The sweep driver turns each Ray Tune trial into a :class:`TrialRecord`; everything here works on those records
only, so this module never imports Ray and a finished sweep can be re-reported from its ``results.json``.

- :func:`rank` / :func:`results_table`: best first, as a fixed-width table for a terminal or a log.
- :func:`write_results` / :func:`read_results`: ``results.json`` (exact round trip) and ``results.csv``.
- :func:`plot_metric_vs_params`, :func:`plot_learning_curves`: where in the space the good trials are, and how
  each trial's metric evolved (trials the scheduler stopped early are marked).
- :func:`plot_success_vs_cost`, :func:`pick_cheapest_within_ci`: for planner sweeps, the cheapest planner whose
  success rate is statistically indistinguishable from the best's.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

TERMINATED = "TERMINATED"
STOPPED_EARLY = "STOPPED_EARLY"
ERROR = "ERROR"

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
_MAX_LEGEND = 12  # learning-curve legend entries; more trials are drawn but not labelled
_DPI = 100


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    status: str
    metric: float | None
    time_s: float | None = None
    iterations: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON values: non-finite floats become None, tuples become lists."""
        return {
            "trial_id": self.trial_id,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "status": self.status,
            "metric": _jsonable(self.metric),
            "time_s": _jsonable(self.time_s),
            "iterations": int(self.iterations),
            "history": [[_jsonable(x), _jsonable(y)] for x, y in self.history],
            "extra": {k: _jsonable(v) for k, v in self.extra.items()},
            "checkpoint": self.checkpoint,
            "mlflow_run_id": self.mlflow_run_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        # Keys this version does not know are ignored, so an older reader still opens a newer results.json.
        nan = float("nan")
        return cls(
            trial_id=str(d["trial_id"]),
            params=dict(d.get("params") or {}),
            status=str(d["status"]),
            metric=d.get("metric"),
            time_s=d.get("time_s"),
            iterations=int(d.get("iterations") or 0),
            # A NaN written as null comes back as NaN where the field is a float, so the types stay as declared.
            history=[(nan if x is None else x, nan if y is None else y) for x, y in d.get("history") or []],
            extra={k: nan if v is None else v for k, v in (d.get("extra") or {}).items()},
            checkpoint=d.get("checkpoint"),
            mlflow_run_id=d.get("mlflow_run_id"),
        )


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # numpy / torch scalars from a trial's report
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _value(r: TrialRecord, metric: str) -> Any:
    """``extra[metric]`` if the trial reported it there (a planner sweep tuned on another metric), else ``metric``."""
    return r.extra.get(metric, r.metric)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- ranking and the table ----------------------------------------------------------------------------


def rank(records: Iterable[TrialRecord], mode: str) -> list[TrialRecord]:
    """Best first by ``metric`` (``mode`` "min" or "max"), ties by trial id; no metric (None/NaN) last."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    records = list(records)
    scored = [r for r in records if not _missing(r.metric)]
    unscored = [r for r in records if _missing(r.metric)]
    scored.sort(key=lambda r: (sign * float(r.metric), r.trial_id))
    unscored.sort(key=lambda r: r.trial_id)
    return scored + unscored


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)  # counts and sizes stay exact: 4g would print a batch of 12345 as 1.234e+04
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _param_keys(records: Iterable[TrialRecord]) -> list[str]:
    return sorted({k for r in records for k in r.params})


def _short_headers(keys: Sequence[str], taken: Collection[str]) -> dict[str, str]:
    """Each dotted key's shortest trailing section that no other key (or fixed column) also ends in."""
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            clash = cand in taken or any(o != key and (o == cand or o.endswith("." + cand)) for o in keys)
            if not clash:
                out[key] = cand
                break
        else:
            out[key] = key
    return out


def results_table(
    records: Iterable[TrialRecord],
    metric: str,
    mode: str,
    columns: Sequence[str] = (),
    best_id: str | None = None,
) -> str:
    """A fixed-width table, one row per trial in :func:`rank` order; the best trial's id is followed by ``*``."""
    ranked = rank(records, mode)
    if best_id is None and ranked and not _missing(ranked[0].metric):
        best_id = ranked[0].trial_id
    keys = _param_keys(ranked)
    headers = _short_headers(keys, taken={"trial", metric, "status", "time", *columns})
    header = ["trial", *(headers[k] for k in keys), metric, *columns, "status", "time"]
    rows = [header]
    for r in ranked:
        rows.append(
            [
                r.trial_id + ("*" if r.trial_id == best_id else ""),
                *(_fmt(r.params.get(k)) for k in keys),
                _fmt(r.metric),
                *(_fmt(r.extra.get(c)) for c in columns),
                r.status,
                "" if r.time_s is None else f"{r.time_s:.1f}s",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows[1:]]
    return "\n".join(lines)


# ---- files --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    # A unique temp name in the same directory: os.replace is then atomic, and two writers never share a temp.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv_cell(v: Any) -> Any:
    v = _jsonable(v)
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def write_results(records: Iterable[TrialRecord], out_dir: str | Path, metric: str, mode: str) -> Path:
    """``results.json`` and ``results.csv`` in ``out_dir`` (trials in rank order); returns the json path."""
    ranked = rank(records, mode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    keys = _param_keys(ranked)
    # The driver may copy the sweep metric into extra as well; one column of that name is enough.
    extra_keys = sorted({k for r in ranked for k in r.extra} - {metric})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "trial_id",
            "status",
            metric,
            *keys,
            *extra_keys,
            "time_s",
            "iterations",
            "checkpoint",
            "mlflow_run_id",
        ]
    )
    for r in ranked:
        writer.writerow(
            [
                r.trial_id,
                r.status,
                _csv_cell(r.metric),
                *(_csv_cell(r.params.get(k)) for k in keys),
                *(_csv_cell(r.extra.get(k)) for k in extra_keys),
                _csv_cell(r.time_s),
                r.iterations,
                _csv_cell(r.checkpoint),
                _csv_cell(r.mlflow_run_id),
            ]
        )
    _atomic_write(out / RESULTS_CSV, buf.getvalue())

    doc = {"metric": metric, "mode": mode, "trials": [r.to_dict() for r in ranked]}
    json_path = out / RESULTS_JSON
    # Written last: a reader that finds results.json also finds the csv of the same sweep.
    _atomic_write(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    log.info("wrote %d trials to %s", len(ranked), json_path)
    return json_path


def read_results(path: str | Path) -> tuple[str, str, list[TrialRecord]]:
    """``(metric, mode, records)`` from a ``results.json`` (or the directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc["metric"], doc["mode"], [TrialRecord.from_dict(d) for d in doc["trials"]]


# ---- plots --------------------------------------------------------------------------------------------


def _new_figure(**kwargs: Any) -> Figure:
    """A figure with no pyplot state behind it.

    ``Figure`` drawn through ``savefig`` renders with Agg whatever backend the process has, so this is as
    headless as ``matplotlib.use("Agg")`` without switching the backend of a caller's notebook, and no figure
    is ever registered with pyplot, so none can be left open (pyplot's registry is also not thread-safe).
    """
    from matplotlib.figure import Figure

    return Figure(dpi=_DPI, **kwargs)


def _save(fig: Figure, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # bbox_inches="tight" keeps a legend placed outside the axes inside the image.
    fig.savefig(out, dpi=_DPI, format="png", bbox_inches="tight")
    log.info("wrote %s", out)
    return out


_STYLE = {  # status -> (marker, colour, legend label) in the scatter plots
    TERMINATED: ("o", "C0", "terminated"),
    STOPPED_EARLY: ("x", "C3", "stopped early"),
}
_OTHER_STYLE = ("s", "C7", "other status")


def _major_labels_only(ax: Axes, xs: Sequence[float]) -> None:
    """Matplotlib labels a log axis's minor ticks when it spans less than ~1.5 decades, and they overlap: keep
    the decade labels when there are two or more, else tilt the minor ones so that they fit."""
    from matplotlib.ticker import NullFormatter

    if max(xs) / min(xs) >= 30:
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.tick_params(axis="x", which="minor", labelsize=7, labelrotation=45)


def plot_metric_vs_params(
    records: Iterable[TrialRecord], metric: str, out_path: str | Path, *, log_keys: Collection[str] = ()
) -> Path | None:
    """One subplot per param key: the metric against that param's value; None if nothing to plot."""
    points = [r for r in records if not _missing(r.metric) and r.params]
    keys = _param_keys(points)
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = _new_figure(figsize=(4.2 * ncols, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    handles: dict[str, Any] = {}
    for ax, key in zip(axes, keys, strict=False):
        # A trial without this key (a conditional param) has no position on its axis.
        have = [r for r in points if key in r.params]
        values = [r.params[key] for r in have]
        numeric = all(_is_number(v) and math.isfinite(v) for v in values)
        if numeric:
            xs = [float(v) for v in values]
            if key in log_keys and all(x > 0 for x in xs):
                ax.set_xscale("log")
                _major_labels_only(ax, xs)
        else:
            labels = sorted({str(v) for v in values})
            pos = {s: i for i, s in enumerate(labels)}
            xs = [float(pos[str(v)]) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        for (marker, colour, label), idx in _group_by_style(have):
            ys = [float(have[i].metric) for i in idx]
            h = ax.scatter([xs[i] for i in idx], ys, marker=marker, c=colour, label=label, alpha=0.85)
            handles.setdefault(label, h)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{metric} vs hyperparameters")
    fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize="small")
    return _save(fig, out_path)


def _group_by_style(records: Sequence[TrialRecord]) -> list[tuple[tuple[str, str, str], list[int]]]:
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(_STYLE.get(r.status, _OTHER_STYLE), []).append(i)
    return list(groups.items())


_LINESTYLE = {TERMINATED: "-", STOPPED_EARLY: "--", ERROR: ":"}


def plot_learning_curves(
    records: Iterable[TrialRecord], metric: str, out_path: str | Path, *, x_label: str = "step"
) -> Path | None:
    """One line per trial from its ``history``; stopped-early trials dashed and ending in ``x``."""
    curves = sorted((r for r in records if r.history), key=lambda r: r.trial_id)
    if not curves:
        return None
    fig = _new_figure(figsize=(8.0, 4.8))
    ax: Axes = fig.subplots()
    for i, r in enumerate(curves):
        xs = [float(x) for x, _ in r.history]
        ys = [float(y) for _, y in r.history]
        label = r.trial_id if i < _MAX_LEGEND else "_nolegend_"
        style = _LINESTYLE.get(r.status, "-.")
        # A trial that reported once (often an ERROR) is a single point: a line alone would not show it.
        marker = "." if len(xs) == 1 else None
        (line,) = ax.plot(xs, ys, linestyle=style, marker=marker, linewidth=1.4, label=label)
        if r.status == STOPPED_EARLY:
            last = [j for j, y in enumerate(ys) if math.isfinite(y)]
            if last:
                ax.plot([xs[last[-1]]], [ys[last[-1]]], marker="x", markersize=8, color=line.get_color())
    if len(curves) > _MAX_LEGEND:
        ax.plot([], [], linestyle="none", label=f"... {len(curves) - _MAX_LEGEND} more")
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (x = stopped early)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="trial")
    return _save(fig, out_path)


def plot_success_vs_cost(
    records: Iterable[TrialRecord],
    out_path: str | Path,
    *,
    metric: str = "success_rate",
    cost_key: str = "time_per_plan_s",
    ci_keys: tuple[str, str] = ("success_ci_low", "success_ci_high"),
) -> Path | None:
    """Success against seconds per plan with CI error bars; the :func:`pick_cheapest_within_ci` trial marked."""
    records = list(records)
    points = [r for r in records if not _missing(_value(r, metric)) and not _missing(r.extra.get(cost_key))]
    if not points:
        return None
    pick = pick_cheapest_within_ci(records, metric=metric, ci_low_key=ci_keys[0], cost_key=cost_key)
    xs = [float(r.extra[cost_key]) for r in points]
    ys = [float(_value(r, metric)) for r in points]
    lo, hi = ci_keys
    # A missing bound draws no bar on that side; clamping at 0 keeps a bound on the wrong side from erroring.
    below = [
        0.0 if _missing(r.extra.get(lo)) else max(0.0, y - r.extra[lo])
        for r, y in zip(points, ys, strict=True)
    ]
    above = [
        0.0 if _missing(r.extra.get(hi)) else max(0.0, r.extra[hi] - y)
        for r, y in zip(points, ys, strict=True)
    ]

    fig = _new_figure(figsize=(7.0, 4.8))
    ax: Axes = fig.subplots()
    ax.errorbar(
        xs, ys, yerr=[below, above], fmt="o", color="C0", ecolor="C0", alpha=0.8, capsize=3, label="trials"
    )
    for r, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(r.trial_id, (x, y), xytext=(4, 4), textcoords="offset points", fontsize="small")
    hit = [i for i, r in enumerate(points) if r is pick]
    if hit:
        i = hit[0]
        ax.scatter(
            [xs[i]], [ys[i]], marker="*", s=220, c="C3", zorder=3, label="cheapest within the best's 95% CI"
        )
    # Planner costs span orders of magnitude (30 vs 3000 samples): a log axis keeps the cheap end readable.
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
        _major_labels_only(ax, xs)
    ax.set_xlabel(f"{cost_key} (seconds per plan)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs cost")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_path)


def pick_cheapest_within_ci(
    records: Iterable[TrialRecord],
    *,
    metric: str = "success_rate",
    ci_low_key: str = "success_ci_low",
    cost_key: str = "time_per_plan_s",
) -> TrialRecord | None:
    """The cheapest trial whose metric lies inside the best trial's 95% interval (at or above its lower bound).

    A trial's value is ``extra[metric]`` when it reported ``metric`` there, else its sweep ``metric`` field.
    Best = highest value, ties to the lower cost, then the trial id. A trial without a cost is not a candidate
    unless it is the best itself, which then loses to any candidate with a known cost. None if no trial has a
    metric.
    """
    scored = [(r, float(v)) for r in records if not _missing(v := _value(r, metric))]
    if not scored:
        return None

    def cost(r: TrialRecord) -> float:
        c = r.extra.get(cost_key)
        return math.inf if _missing(c) else float(c)

    best, best_value = min(scored, key=lambda rv: (-rv[1], cost(rv[0]), rv[0].trial_id))
    ci_low = best.extra.get(ci_low_key)
    if _missing(ci_low):
        log.info("best trial %s has no %s: it is the only candidate", best.trial_id, ci_low_key)
        return best
    candidates = [(r, v) for r, v in scored if v >= ci_low and (r is best or math.isfinite(cost(r)))]
    pick, _ = min(candidates, key=lambda rv: (cost(rv[0]), -rv[1], rv[0].trial_id))
    log.info(
        "best %s=%s is %s; cheapest within its CI is %s", metric, best_value, best.trial_id, pick.trial_id
    )
    return pick

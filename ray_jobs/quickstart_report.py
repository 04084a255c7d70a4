"""The quickstart's report: ``report.md`` in the output dir, its figures and GIFs under ``report/``.

Learning curves come from the training run's MLflow metric history, success vs env steps from the episodes'
``first_success_step`` in ``plan/<policy>/results.json``, the GIFs from the evaluation's episode videos
(real | imagined | goal). Everything is rewritten on every run (a few seconds), so a reused stage still gets a
report that matches the files beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_GIFS = 2


def loss_histories(tracking_uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """``train/*loss*`` and ``val/*loss*`` metric histories of an MLflow run -> {name: [(step, value)]}."""
    from ray_jobs.tracking import mlflow_client

    client = mlflow_client(tracking_uri)
    names = [
        k for k in client.get_run(run_id).data.metrics if k.split("/")[0] in ("train", "val") and "loss" in k
    ]
    out = {}
    for name in sorted(names):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        if points:
            out[name] = points
    return out


def reached_by_step(first_success_steps: list[int | None], budget: int) -> np.ndarray:
    """(budget + 1,): the fraction of episodes that have reached the goal by env step t = 0..budget."""
    steps = np.arange(budget + 1)
    if not first_success_steps:
        return np.zeros(budget + 1)
    reached = [(steps >= s) if s is not None else np.zeros(budget + 1, bool) for s in first_success_steps]
    return np.mean(reached, axis=0)


def _plot_losses(histories: dict[str, list[tuple[int, float]]], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not histories:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, split in zip(axes, ("train", "val"), strict=True):
        for name, points in histories.items():
            if name.startswith(split + "/"):
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if len(points) < 20 else None, ms=3, label=name)
        ax.set(title=f"{split} losses", xlabel="optimizer step", yscale="log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_success(rows: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for row in rows.values():
        curve = reached_by_step(row["first_success_steps"], int(row["budget"]))
        ax.step(np.arange(len(curve)), curve, where="post", label=f"{row['policy']} (n={row['n']})")
    ax.set(xlabel="env step", ylabel="fraction at the goal by then", ylim=(-0.02, 1.02),
           title="episodes that have reached the goal")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _gifs(videos: list[Path], folder: Path) -> list[tuple[Path, Path]]:
    """The first :data:`MAX_GIFS` mp4 videos as GIFs -> [(gif, mp4)]; a video that cannot be read is skipped."""
    import imageio.v3 as iio

    from dinowm_core.evaluation.video import FPS

    out = []
    for video in videos[:MAX_GIFS]:
        gif = folder / (video.stem + ".gif")
        try:
            frames = iio.imread(video, plugin="pyav")
            iio.imwrite(gif, frames, plugin="pillow", duration=1000 / FPS, loop=0)
        except Exception as e:  # a report without a GIF beats no report
            log.warning("no GIF of %s: %s", video, e)
            continue
        out.append((gif, video))
    return out


def write_report(
    out: Path,
    *,
    trained: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    tracking_uri: str,
    table: list[str],
) -> Path:
    """Write ``out/report.md`` and its figures under ``out/report/`` -> the report's path."""
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        histories = loss_histories(tracking_uri, trained["mlflow_run_id"])
    except Exception as e:  # e.g. a tracking server that is down: the rest of the report still stands
        log.warning("no learning curves: %s", e)
        histories = {}
    curves = _plot_losses(histories, folder / "learning_curves.png")
    success = _plot_success(rows, folder / "success_vs_steps.png")
    videos = sorted((out / "plan" / "planner" / "videos").glob("*.mp4"))
    gifs = _gifs(videos, folder)

    def rel(p: Path) -> str:
        return str(p.relative_to(out))

    md = [
        "# dinowm quickstart report",
        "",
        f"Training run `{trained['run_name']}` (MLflow run `{trained['mlflow_run_id']}`, model version "
        f"{trained.get('model_version')}), checkpoint `{trained['checkpoint']}`.",
        "",
        "## Learning curves",
        "",
        f"![learning curves]({rel(curves)})" if curves else "(no loss metrics found in the MLflow run)",
        "",
        "## Planning: MPC-CEM through the planning service vs random actions",
        "",
        *table,
        "",
        "Success is being at the goal at the end of the budget, with a 95% Wilson interval. Time per plan is the "
        "env actors' round trip to the service (HTTP, batching and planning); requests served and mean batch "
        "come from the service's answers (each names how many requests its planner call batched).",
        "",
        "## Success vs env steps",
        "",
        f"![success vs env steps]({rel(success)})",
        "",
        "The fraction of episodes that have reached the goal by each env step (an episode that reaches it and "
        "drifts away still counts, so the last value can exceed the success rate above).",
        "",
        "## Episodes (real | imagined | goal)",
        "",
    ]
    for gif, video in gifs:
        md += [f"![{video.stem}]({rel(gif)})", f"[{video.name}]({rel(video)})", ""]
    for video in videos[len(gifs) :]:
        md.append(f"- [{video.name}]({rel(video)})")
    if not videos:
        md.append("(no videos were recorded)")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path

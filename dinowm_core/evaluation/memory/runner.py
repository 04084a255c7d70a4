"""The memory evaluation loop (Ray-free): episode specs of the ``memory_eval`` grid, one score row per episode
from the model's imagination, and the results document (per grid cell and pooled per task, with 95% intervals).

Episodes come from any iterable (built in-process, or by Ray env actors in ``ray_jobs.memory_eval``); the model
side runs here, one episode at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path as FsPath
from typing import Any

import numpy as np

from dinowm_core.config.memory_eval import MemoryEvalConfig
from dinowm_core.evaluation.memory.episodes import CHOICE_TASKS, EpisodeSpec, MemoryEpisode
from dinowm_core.evaluation.memory.goal import GoalRunner
from dinowm_core.evaluation.memory.scores import choose, latent_mse, mean_summary, rate_summary

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 10.0
ERROR_BATCH = 16


def episode_specs(m: MemoryEvalConfig, *, img_size: int, episodes: int | None = None) -> list[EpisodeSpec]:
    """Every episode of the grid (the ``planning`` task runs through the planning evaluation instead).
    ``error_horizon`` ignores the grid: ``episodes`` held-out trajectories, each long enough for the last
    of ``error_horizons``."""
    n = episodes or m.episodes
    common = {"seed": m.seed, "colors": tuple(m.colors), "clear_frames": m.clear_frames, "img_size": img_size,
              "error_context": m.error_context, "error_steps": max(m.error_horizons),
              "goal_budget": m.goal_budget}  # fmt: skip
    specs = []
    for task in m.tasks:
        if task == "planning":
            continue
        if task == "error_horizon":
            specs += [EpisodeSpec(task, max(m.num_objects), 0, i, **common) for i in range(n)]
            continue
        for k in m.num_objects:
            if task == "sequence_memory" and k < 2:
                continue
            for h in m.horizons:
                specs += [EpisodeSpec(task, k, h, i, **common) for i in range(n)]
    return specs


def score_episode(imaginer: Any, ep: MemoryEpisode, goal: GoalRunner | None = None) -> dict[str, Any]:
    """One row of scores for ``ep`` from ``imaginer``'s imagination (see :mod:`.scores`), or for
    ``object_goal`` from ``goal``'s planning in the env."""
    s = ep.spec
    if s.task == "object_goal":
        if goal is None:
            raise ValueError("object_goal episodes are planned: pass a GoalRunner")
        return goal.run(ep)
    row: dict[str, Any] = {"task": s.task, "num_objects": s.num_objects, "horizon": s.horizon, "index": s.index,
                           "observed_frames": len(ep.frames)}  # fmt: skip
    if s.task in CHOICE_TASKS:
        back = ep.probes["back"]
        imagined = imaginer.imagine(ep, back)
        picks = [j - 1 for j in ep.probe_index]
        cand = imaginer.encode(ep.candidates.reshape(-1, *ep.candidates.shape[2:]))
        cand = cand.reshape(len(ep.candidates), len(picks), *cand.shape[1:])
        rng = np.random.default_rng([s.seed, s.index, s.num_objects, s.horizon, 7])
        pick, dist = choose(imagined[picks], cand, rng)
        row.update(correct=bool(pick == ep.answer), chance=ep.chance, choice=pick, answer=ep.answer,
                   probe_steps=len(back.actions), distances=[float(d) for d in dist])  # fmt: skip
        row["_imagined"] = imagined
    elif s.task == "loop_closure":
        revisit = ep.probes["revisit"]
        imagined = imaginer.imagine(ep, revisit)
        truth = imaginer.encode(revisit.frames[-1:])
        first = imaginer.imagine_first_visit(ep)[-1:]
        row.update(err_revisit=float(latent_mse(imagined[-1:], truth)[0]),
                   err_first_visit=float(latent_mse(first, imaginer.encode(ep.frames[-1:]))[0]),
                   revisit_steps=len(revisit.actions), first_visit_steps=len(ep.frames) - imaginer.num_hist)  # fmt: skip
        if imaginer.has_memory:
            blank = imaginer.imagine(ep, revisit, use_memory=False)[-1:]
            row["err_revisit_no_memory"] = float(latent_mse(blank, truth)[0])
        row["_imagined"] = imagined
    else:
        return score_error_batch(imaginer, [ep])[0]
    return row


def score_error_batch(imaginer: Any, eps: list[MemoryEpisode]) -> list[dict[str, Any]]:
    """Prediction error vs horizon of ``error_horizon`` episodes (equal lengths: one batched rollout)."""
    imagined = imaginer.imagine_batch(eps, "future")
    blank = imaginer.imagine_batch(eps, "future", use_memory=False) if imaginer.has_memory else None
    rows = []
    for i, ep in enumerate(eps):
        s, truth = ep.spec, imaginer.encode(ep.probes["future"].frames)
        row = {"task": s.task, "num_objects": s.num_objects, "horizon": s.horizon, "index": s.index,
               "observed_frames": len(ep.frames), "mse": latent_mse(imagined[i], truth).tolist()}  # fmt: skip
        if blank is not None:
            row["mse_no_memory"] = latent_mse(blank[i], truth).tolist()
        row["_imagined"] = imagined[i]
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], m: MemoryEvalConfig) -> dict[str, Any]:
    """Per task: one entry per grid cell and a pooled one, each with its episode count and 95% interval."""
    out: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        if task in CHOICE_TASKS or task == "object_goal":
            key = "success" if task == "object_goal" else "correct"
            cells = []
            for k, h in dict.fromkeys((r["num_objects"], r["horizon"]) for r in mine):
                cell = [r for r in mine if (r["num_objects"], r["horizon"]) == (k, h)]
                cells.append({"num_objects": k, "horizon": h,
                              **rate_summary([r[key] for r in cell], cell[0].get("chance"))})  # fmt: skip
            chance = [r["chance"] for r in mine if r.get("chance") is not None]
            pooled = rate_summary([r[key] for r in mine], float(np.mean(chance)) if chance else None)
            out[task] = {"metric": "success_rate" if key == "success" else "accuracy", "pooled": pooled,
                         "cells": cells}  # fmt: skip
            if key == "success":
                pooled["spl"] = mean_summary([r["spl"] for r in mine], m.bootstrap)
                pooled["steps"] = mean_summary([r["steps"] for r in mine], m.bootstrap)
                pooled["closer"] = mean_summary(
                    [r["start_distance"] - r["distance"] for r in mine], m.bootstrap
                )
        elif task == "loop_closure":
            keys = ["err_revisit", "err_first_visit", "err_revisit_no_memory"]
            pooled = {k: mean_summary([r[k] for r in mine], m.bootstrap) for k in keys if k in mine[0]}
            pooled["first_minus_revisit"] = mean_summary(
                [r["err_first_visit"] - r["err_revisit"] for r in mine], m.bootstrap
            )
            out[task] = {"metric": "latent_mse", "pooled": pooled}
        else:
            steps = m.error_horizons
            curve = {"horizons": steps, "mse": [mean_summary([r["mse"][h - 1] for r in mine], m.bootstrap)
                                                 for h in steps]}  # fmt: skip
            if "mse_no_memory" in mine[0]:
                curve["mse_no_memory"] = [mean_summary([r["mse_no_memory"][h - 1] for r in mine], m.bootstrap)
                                          for h in steps]  # fmt: skip
            out[task] = {"metric": "latent_mse", "pooled": {"n": len(mine)}, **curve}
    return out


def run_memory_eval(
    m: MemoryEvalConfig,
    imaginer: Any,
    episodes: Iterable[MemoryEpisode],
    *,
    total: int | None = None,
    videos_dir: str | FsPath | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    goal: GoalRunner | None = None,
) -> dict[str, Any]:
    """Score every episode -> ``{"tasks": summaries, "episodes": rows, "videos": [...], "seconds": ...}``.
    Episodes built with maps (``MemoryEpisode.maps``) get a GIF in ``videos_dir``. ``goal`` plans the
    ``object_goal`` episodes."""
    rows, videos, pending = [], [], []
    t0 = last = time.perf_counter()

    def keep(scored: list[dict[str, Any]], eps: list[MemoryEpisode]) -> None:
        for row, ep in zip(scored, eps, strict=True):
            imagined, path = row.pop("_imagined", None), row.pop("_path", None)
            if videos_dir is not None and ep.maps is not None:
                if path is not None and goal is not None:  # what was done: [real | map]
                    done = replace(ep, probes={"executed": path}, maps=goal.maps(ep, path))
                    videos.append(str(write_memory_video(FsPath(videos_dir), done, None, dream=False)))
                else:
                    videos.append(str(write_memory_video(FsPath(videos_dir), ep, imaginer.decode(imagined))))
            rows.append(row)

    for i, ep in enumerate(episodes, 1):
        if ep.spec.task == "error_horizon":  # equal lengths: scored in batches of ERROR_BATCH
            pending.append(ep)
            if len(pending) == ERROR_BATCH:
                keep(score_error_batch(imaginer, pending), pending)
                pending = []
        else:
            keep([score_episode(imaginer, ep, goal)], [ep])
        now = time.perf_counter()
        if on_progress is not None:
            on_progress(i, total or i)
        if now - last >= PROGRESS_INTERVAL_S:
            last = now
            log.info("memory eval: %d/%s episodes scored (%.1f episodes/min)", i, total or "?",
                     60 * i / (now - t0))  # fmt: skip
    if pending:
        keep(score_error_batch(imaginer, pending), pending)
    seconds = time.perf_counter() - t0
    return {"tasks": summarize(rows, m), "episodes": rows, "videos": videos, "seconds": seconds,
            "episodes_per_minute": 60 * len(rows) / max(seconds, 1e-9)}  # fmt: skip


def write_memory_video(
    out: FsPath, ep: MemoryEpisode, imagined: np.ndarray | None, *, dream: bool = True
) -> FsPath:
    """A GIF of [real | imagined | full map] over the observed part and the probe (imagined panel black over
    the observed part, and throughout when the model has no decoder; left out with ``dream=False``)."""
    import imageio.v3 as iio

    from dinowm_core.evaluation.video import _fit

    probe = next(iter(ep.probes.values()))
    real = np.concatenate([ep.frames, probe.frames])
    size = real.shape[1]
    panel = np.zeros_like(real)
    if imagined is not None:
        panel[len(ep.frames) :] = np.stack([_fit(f, size) for f in imagined])
    maps = np.stack([_fit(f, size) for f in ep.maps])
    frames = np.concatenate([real, panel, maps] if dream else [real, maps], axis=2)
    s = ep.spec
    path = out / f"{s.task}_n{s.num_objects}_h{s.horizon}_ep{s.index:03d}.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, duration=120, loop=0)
    return path

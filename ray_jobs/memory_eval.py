"""`dinowm memory-eval CKPT`: the memory evaluation suite on four_rooms (docs/memory.md "Memory evaluation").

Glue around :mod:`dinowm_core.evaluation.memory`:

* **env actors** build and render the scripted episodes (``EpisodeBuilder`` wrapped with ``ray.remote``, sized like
  the planning evaluation's env actors); the driver keeps a bounded number of episodes in flight and scores each
  with the model as it arrives, in spec order, so the results do not depend on the number of actors;
* ``--in-process`` builds them in the driver instead (same episodes, same numbers);
* the ``planning`` task is ``memory_plan``: the standard planning evaluation (env actors with ``use_ray``);
* ``results.json``, plots (error vs horizon, accuracy by task) and GIFs go to the output dir and one MLflow run.

``compare_plots`` draws several results documents into one figure (one line per model).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dinowm_core.config import MEMORY_TASKS, Config
from dinowm_core.evaluation.memory.episodes import EpisodeBuilder, EpisodeSpec, MemoryEpisode

log = logging.getLogger(__name__)

IN_FLIGHT_PER_ACTOR = 3  # episodes queued per actor: keeps actors busy without filling the object store


def build_local(
    specs: list[EpisodeSpec], img_size: int, colors: tuple[str, ...], n_maps: int
) -> Iterator[MemoryEpisode]:
    builder = EpisodeBuilder(img_size, colors)
    for s in specs:
        yield builder.build(s, with_map=_recorded(s, n_maps))


def _recorded(spec: EpisodeSpec, n_maps: int) -> bool:
    return spec.index < n_maps


def build_on_ray(specs: list[EpisodeSpec], img_size: int, colors: tuple[str, ...], n_maps: int,
                 num_actors: int | None, cpus_per_actor: float) -> Iterator[MemoryEpisode]:  # fmt: skip
    """Episodes built by env actors, yielded in spec order while the actors build the next ones."""
    import ray

    from ray_jobs.evaluate import env_actor_count

    total = {k: float(v) for k, v in ray.cluster_resources().items()}
    n = env_actor_count(len(specs), num_actors, cpus_per_actor, total)
    actor_cls = ray.remote(num_cpus=cpus_per_actor)(EpisodeBuilder)
    env_vars = {"OMP_NUM_THREADS": "1", "LP_NUM_THREADS": "1"}
    actors = [
        actor_cls.options(runtime_env={"env_vars": env_vars}).remote(img_size, colors) for _ in range(n)
    ]
    log.info("memory eval: %d episodes built by %d env actors", len(specs), n)
    queue: deque = deque()
    todo = iter(enumerate(specs))
    try:
        for i, s in todo:
            queue.append(actors[i % n].build.remote(s, _recorded(s, n_maps)))
            if len(queue) >= IN_FLIGHT_PER_ACTOR * n:
                break
        while queue:
            ep = ray.get(queue.popleft())
            nxt = next(todo, None)
            if nxt is not None:
                i, s = nxt
                queue.append(actors[i % n].build.remote(s, _recorded(s, n_maps)))
            yield ep
    finally:
        for a in actors:
            ray.kill(a)


def memory_config(ckpt_dir: Path, overrides: list[str], episodes: int | None) -> Config:
    """The checkpoint's config + the four_rooms planning preset + overrides; checks it is a memory-eval model."""
    from dinowm_core.evaluation.loop import check_model_env
    from dinowm_core.evaluation.memory import plan_overrides
    from dinowm_core.presets import plan_config
    from dinowm_core.training.checkpoint import load_config_from_checkpoint
    from ray_jobs.evaluate import eval_shortcuts

    trained = load_config_from_checkpoint(ckpt_dir)
    if trained.env.name != "four_rooms":
        raise ValueError(f"env.name: memory-eval runs on four_rooms; the checkpoint was trained on "
                         f"{trained.env.name!r}")  # fmt: skip
    cfg = plan_config(trained, eval_shortcuts(overrides))
    check_model_env(cfg, trained)
    if episodes is not None:
        cfg = cfg.model_copy(
            update={"memory_eval": cfg.memory_eval.model_copy(update={"episodes": episodes})}
        )
    m = cfg.memory_eval
    if m.clear_frames < cfg.num_hist:
        raise ValueError(f"memory_eval.clear_frames ({m.clear_frames}) must be >= num_hist ({cfg.num_hist}): "
                         "what was shown would still be in the model's context")  # fmt: skip
    if cfg.frameskip != 1:
        raise ValueError(
            f"frameskip: memory-eval needs a frameskip=1 model, the checkpoint has {cfg.frameskip}"
        )
    from dinowm_core.presets import apply_overrides

    return apply_overrides(cfg, plan_overrides(m)) if "planning" in m.tasks else cfg


def run(ckpt: str, overrides: list[str], *, use_ray: bool = True, out: str | Path | None = None,
        episodes: int | None = None, progress: bool = True) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """The whole of ``dinowm memory-eval`` -> (results document, output dir). Raises ``ConfigError`` /
    ``CheckpointError`` / ``ValueError`` / ``FileNotFoundError`` / ``LookupError`` with a message for the user."""
    from dinowm_core.evaluation.adapter import resolve_device
    from dinowm_core.evaluation.memory import (
        ModelImaginer,
        episode_specs,
        memory_plan,
        plan_summary,
        run_memory_eval,
    )
    from dinowm_core.training.checkpoint import load_world_model
    from ray_jobs import tracking
    from ray_jobs.cluster import connect
    from ray_jobs.job_config import load_job_config, resolve_paths, split_job_overrides
    from ray_jobs.runs import checkpoint_for

    core, job_overrides = split_job_overrides(overrides)
    job = load_job_config(job_overrides)
    ckpt_dir = checkpoint_for(ckpt, core, job.mlflow).resolve()
    cfg, job = resolve_paths(memory_config(ckpt_dir, core, episodes), job)
    m = cfg.memory_eval
    out_dir = Path(
        out or Path(cfg.output_dir) / "memory_eval" / f"{time.strftime('%Y%m%d_%H%M%S')}_{ckpt_dir.name}"
    )
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    wm = load_world_model(ckpt_dir)
    imaginer = ModelImaginer(wm, device=resolve_device(cfg.eval.device))
    specs = episode_specs(m, img_size=cfg.eval.render_size or cfg.img_size)
    if use_ray:
        connect(job.ray)
    t0 = time.perf_counter()
    args = (specs, cfg.eval.render_size or cfg.img_size, tuple(m.colors), m.num_videos)
    stream = build_on_ray(*args, m.num_actors, m.cpus_per_actor) if use_ray else build_local(*args)
    goal = None
    if "object_goal" in m.tasks:  # planned in the driver's own env, the model beside it
        from dinowm_core.evaluation.memory import GoalRunner
        from dinowm_core.evaluation.policy import build_policy

        policy = build_policy(cfg, adapter=imaginer.adapter)
        goal = GoalRunner(imaginer, policy, img_size=args[1], colors=tuple(m.colors))
    bar = _bar(len(specs), progress)
    try:
        result = run_memory_eval(m, imaginer, stream, total=len(specs), videos_dir=out_dir / "videos",
                                 on_progress=lambda i, n: bar.update(1), goal=goal)  # fmt: skip
    finally:
        bar.close()
    if "planning" in m.tasks:
        log.info("memory eval: planning success, %d episodes of %d env steps (%s)", m.plan_episodes, m.plan_budget,
                 cfg.planner.name)  # fmt: skip
        if use_ray:
            from ray_jobs.evaluate import evaluate_on_ray

            result["tasks"]["planning"] = plan_summary(
                evaluate_on_ray(None, cfg, wm=wm, out_dir=out_dir / "plan")
            )
        else:
            result["tasks"]["planning"] = memory_plan(wm, cfg, out_dir / "plan")
    result.update(
        protocol={
            "checkpoint": str(ckpt_dir),
            "predictor": cfg.presets.get("predictor"),
            "memory": wm.has_memory,
            "num_hist": cfg.num_hist,
            "memory_eval": m.model_dump(),
            "runner": "ray" if use_ray else "in-process",
            "seconds_total": time.perf_counter() - t0,
        },  # fmt: skip
    )
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    plots = write_plots([result], out_dir, [cfg.presets.get("predictor") or "model"])
    tracking.log_memory_evaluation(result, cfg, job.mlflow, out_dir, ckpt, plots)
    return result, out_dir


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ep", desc="memory eval", disable=not enabled)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per task: the pooled score, its 95% interval, the episode count (and chance)."""
    lines = []
    for task, t in result["tasks"].items():
        p = t.get("pooled", {})
        if "rate" in p:
            chance = f", chance {p['chance']:.3f}" if "chance" in p else ""
            if "spl" in p:
                chance += (f", SPL {p['spl']['mean']:.3f}, {p['steps']['mean']:.1f} steps, "
                           f"{p['closer']['mean']:.1f} cells closer")  # fmt: skip
            lines.append(f"{task}: {p['rate']:.3f} (95% CI {p['ci95'][0]:.3f}-{p['ci95'][1]:.3f}) over "
                         f"{p['n']} episodes{chance}")  # fmt: skip
        elif task == "loop_closure":
            parts = [f"{k} {v['mean']:.4g} ({v['ci95'][0]:.4g}-{v['ci95'][1]:.4g})" for k, v in p.items()]
            lines.append(f"{task} (latent MSE, n={p['err_revisit']['n']}): " + ", ".join(parts))
        elif task == "error_horizon":
            parts = [f"h{h} {v['mean']:.4g}" for h, v in zip(t["horizons"], t["mse"], strict=True)]
            lines.append(f"{task} (latent MSE, n={p['n']}): " + ", ".join(parts))
    return lines


def write_plots(results: list[dict[str, Any]], out_dir: Path, labels: list[str]) -> list[Path]:
    """error_vs_horizon.png (one line per model, 95% band) and accuracy_by_task.png (bars with intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    curves = [(lab, r["tasks"]["error_horizon"]) for lab, r in zip(labels, results, strict=True)
              if "error_horizon" in r["tasks"]]  # fmt: skip
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for lab, c in curves:
            mean = [v["mean"] for v in c["mse"]]
            lo, hi = zip(*[v["ci95"] for v in c["mse"]], strict=True)
            ax.plot(c["horizons"], mean, marker="o", label=lab)
            ax.fill_between(c["horizons"], lo, hi, alpha=0.2)
        ax.set(
            xscale="log",
            xlabel="open-loop steps",
            ylabel="visual latent MSE",
            title="prediction error vs horizon",
        )
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "error_vs_horizon.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    tasks = [
        t for t in MEMORY_TASKS if any("rate" in r["tasks"].get(t, {}).get("pooled", {}) for r in results)
    ]
    if tasks:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.8 / len(results)
        for k, (lab, r) in enumerate(zip(labels, results, strict=True)):
            xs = np.arange(len(tasks)) + k * width
            pooled = [r["tasks"].get(t, {}).get("pooled", {}) for t in tasks]
            rate = [p.get("rate", np.nan) for p in pooled]
            err = np.array([[p["rate"] - p["ci95"][0], p["ci95"][1] - p["rate"]] if "rate" in p else [0, 0]
                            for p in pooled]).T  # fmt: skip
            ax.bar(xs, rate, width, yerr=err, capsize=3, label=lab)
            for x, p in zip(xs, pooled, strict=True):
                if "chance" in p:
                    ax.hlines(p["chance"], x - width / 2, x + width / 2, colors="k", linestyles="dotted")
        ax.set_xticks(
            np.arange(len(tasks)) + 0.4 - width / 2, [t.replace("_", "\n") for t in tasks], fontsize=8
        )
        ax.set(ylim=(0, 1), ylabel="rate (95% CI; dotted: chance)", title="memory tasks")
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "accuracy_by_task.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def compare_plots(result_files: list[str | Path], labels: list[str], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_plots([json.loads(Path(f).read_text()) for f in result_files], out, labels)

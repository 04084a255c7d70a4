"""Planning evaluation on Ray: episodes in environment actors, one batched planner (reference section 5).

Glue around :func:`dinowm_core.evaluation.loop.run_evaluation`:

* **env actors**: ``EpisodeGroup`` (Ray-free) wrapped with ``ray.remote``; each owns its envs (one per
  episode slot) and runs ``reset / observe / step / results``. Every planning step the driver gathers the
  observations of all live actors, so the planner still plans the whole batch in one call;
* **planner**: in the driver (``planner="local"``) or a :class:`PlannerActor` holding the model
  (``planner="actor"``, e.g. on a GPU node). Both expose ``reset / plan / imagine``; a Serve deployment can
  take the actor's place behind the same three calls.

Per-episode results equal the in-process evaluation's for the same seeds (the planners draw one random
stream per episode).

:func:`plan_checkpoint` is the whole of ``dinowm plan`` (config, evaluation, MLflow record), and
``python -m ray_jobs.evaluate CKPT [--planner-actor] [--out DIR] [--json] key=value ...`` runs it on Ray without
the CLI, e.g. as ``ray job submit -- python -m ray_jobs.evaluate CKPT env=wall n_evals=50``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray

from dinowm_core.config import Config, EvalConfig
from dinowm_core.evaluation.episodes import EpisodeGroup
from dinowm_core.evaluation.loop import Episodes, run_evaluation
from dinowm_core.evaluation.report import EvalResult

log = logging.getLogger(__name__)


def ray_call(groups: list[Any], method: str, args: list[tuple]) -> list[Any]:
    """Fan a method out to actor handles and wait for all of them (the actors run concurrently)."""
    return ray.get([getattr(g, method).remote(*a) for g, a in zip(groups, args, strict=True)])


class PlannerActor:
    """Holds the world model and the policy; the driver calls ``reset / plan / imagine`` remotely."""

    def __init__(self, ckpt: str, cfg_json: str, action_box: tuple[Any, Any], num_threads: int = 1) -> None:
        import torch

        from dinowm_core.evaluation.adapter import ModelAdapter, resolve_device
        from dinowm_core.evaluation.policy import build_policy
        from dinowm_core.training.checkpoint import load_world_model

        torch.set_num_threads(num_threads)  # small machines: one intra-op thread per actor
        cfg = Config.from_json(cfg_json)
        wm = load_world_model(ckpt)
        self.adapter = ModelAdapter(wm, device=resolve_device(cfg.eval.device))
        self.policy = build_policy(cfg, adapter=self.adapter, action_box=action_box)

    def closed_loop(self) -> bool:
        return self.policy.closed_loop

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        self.policy.reset(episode_seeds, seed)

    def plan(self, obs: dict, goal: dict, steps_left: int | None = None) -> Any:
        return self.policy.plan(obs, goal, steps_left)

    def imagine(self, obs0: dict, actions: Any, final: dict, decode: bool) -> dict:
        return self.adapter.imagine(obs0, actions, final, decode)


class RemotePolicy:
    """Driver-side proxy: the :class:`~dinowm_core.evaluation.policy.Policy` protocol over a planner actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.closed_loop = ray.get(handle.closed_loop.remote())

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        ray.get(self.handle.reset.remote(episode_seeds, seed))

    def plan(self, obs: dict, goal: dict, steps_left: int | None = None) -> Any:
        return ray.get(self.handle.plan.remote(obs, goal, steps_left))

    def imagine(self, obs0: dict, actions: Any, final: dict, decode: bool) -> dict:
        return ray.get(self.handle.imagine.remote(obs0, actions, final, decode))


_EPS = 1e-9  # fractional CPUs (0.25 x 4) must not round down a whole actor


def _fmt(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()))


def planner_demand(opts: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources a planner actor created with ``.options(**opts)`` holds for its lifetime. An actor
    with any resource option holds 1 CPU unless ``num_cpus`` says otherwise (Ray's default)."""
    num_cpus = opts.get("num_cpus")
    demand = {"CPU": 1.0 if num_cpus is None else float(num_cpus)}
    if opts.get("num_gpus"):
        demand["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        demand["memory"] = float(opts["memory"])
    demand.update({k: float(v) for k, v in (opts.get("resources") or {}).items()})
    return demand


def env_actor_count(
    n_evals: int,
    num_actors: int | None,
    cpus_per_actor: float,
    total: Mapping[str, float],
    reserved: Mapping[str, float] | None = None,
) -> int:
    """How many env actors to start on a cluster with ``total`` resources, ``reserved`` being held for the
    planner actor. ``num_actors`` None = one per episode, but only as many as fit beside the reservation:
    every planning step gathers every actor's observation and waits for the planner, so one actor (or the
    planner) that cannot be placed stalls the whole evaluation forever. Raises ``ValueError`` when not even
    one env actor fits beside the reservation."""
    reserved = dict(reserved or {})
    need = {**reserved, "CPU": reserved.get("CPU", 0.0) + cpus_per_actor}
    short = [f"{k} {v:g} > {total.get(k, 0.0):g}" for k, v in need.items() if v > total.get(k, 0.0) + _EPS]
    if short:
        raise ValueError(
            f"the Ray cluster ({_fmt(total)}) cannot hold one env actor ({cpus_per_actor:g} CPU) beside the "
            f"planner actor ({_fmt(reserved) or 'nothing'}): needed {', '.join(short)}; the evaluation would "
            f"wait forever. Add resources, or lower the planner's / env actors' requests"
        )
    free_cpu = total.get("CPU", 0.0) - reserved.get("CPU", 0.0)
    fit = max(1, int(free_cpu / cpus_per_actor + _EPS))
    if num_actors is None:
        return min(n_evals, fit)
    if min(n_evals, num_actors) > fit:
        log.warning("eval.num_actors=%d env actors need %g CPU beside the planner's %g but the cluster has %g: "
                    "they only start if the cluster grows", num_actors, num_actors * cpus_per_actor,
                    reserved.get("CPU", 0.0), total.get("CPU", 0.0))  # fmt: skip
    return min(n_evals, num_actors)


def make_env_actors(
    cfg: Config, num_actors: int | None, cpus_per_actor: float, reserved: Mapping[str, float] | None = None
) -> Episodes:
    """Env actors sharing ``eval.n_evals`` slots, sized by :func:`env_actor_count` (``reserved``: the planner
    actor's resources, which must stay free for it)."""
    e = cfg.eval
    total = {k: float(v) for k, v in ray.cluster_resources().items()}
    n = env_actor_count(e.n_evals, num_actors, cpus_per_actor, total, reserved)
    per = math.ceil(e.n_evals / n)
    slots = [min(per, e.n_evals - i * per) for i in range(n) if e.n_evals - i * per > 0]
    actor_cls = ray.remote(num_cpus=cpus_per_actor)(EpisodeGroup)
    env_vars = {"LP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # one Mesa/OpenMP thread per env actor
    size = e.render_size or cfg.img_size
    handles = [
        actor_cls.options(runtime_env={"env_vars": env_vars}).remote(
            cfg.env.name,
            k,
            img_size=size,
            budget=e.budget,
            frameskip=cfg.frameskip,
            oracle_stop=e.oracle_stop,
            env_kwargs=cfg.env.kwargs,
        )  # fmt: skip
        for k in slots
    ]
    return Episodes(handles, slots, call=ray_call)


def evaluate_on_ray(
    ckpt: str | Path | None,
    cfg: Config,
    *,
    wm: Any = None,
    planner: str = "local",
    out_dir: str | Path | None = None,
    cpus_per_actor: float = 0.25,
    planner_resources: dict[str, float] | None = None,
    dataset: Any = None,
    policy: Any = None,
) -> EvalResult:
    """Evaluate with env actors. ``planner``: ``local`` (model in the driver; ``wm`` or ``ckpt``) or
    ``actor`` (a :class:`PlannerActor` loads ``ckpt``; ``planner_resources`` e.g. ``{"num_gpus": 1}``,
    default one CPU). The planner actor's resources are reserved before the env actors are sized.
    ``policy``: plans with it instead (e.g. a planning service's), the model in the driver imagines."""
    from dinowm_core.envs.base import make_env
    from dinowm_core.evaluation.adapter import ModelAdapter, resolve_device
    from dinowm_core.evaluation.policy import build_policy

    e = cfg.eval
    if planner not in ("local", "actor"):
        raise ValueError(f"planner must be 'local' or 'actor', got {planner!r}")
    use_actor = planner == "actor" and e.policy == "planner" and policy is None
    if use_actor and ckpt is None:
        raise ValueError("planner=actor loads the model from a checkpoint: pass ckpt")
    opts = planner_resources or {"num_cpus": 1}
    episodes = make_env_actors(cfg, e.num_actors, cpus_per_actor, planner_demand(opts) if use_actor else None)
    handle = None
    try:
        box = ray.get(episodes.groups[0].action_box.remote())
        size = e.render_size or cfg.img_size
        target_env = make_env(cfg.env.name, img_size=size, **cfg.env.kwargs)
        if use_actor:
            handle = ray.remote(PlannerActor).options(**opts).remote(str(ckpt), cfg.to_json(), box)
            policy = imaginer = RemotePolicy(handle)
            normalizer = None
            if e.goal_source == "random_action":
                normalizer = ModelAdapter(wm or _load(ckpt), device="cpu").normalizer
        else:
            model = wm if wm is not None else (_load(ckpt) if ckpt is not None else None)
            adapter = ModelAdapter(model, device=resolve_device(e.device)) if model is not None else None
            policy = policy or build_policy(cfg, adapter=adapter, action_box=box)
            imaginer, normalizer = adapter, (adapter.normalizer if adapter else None)
        return run_evaluation(cfg, episodes, policy, target_env, imaginer=imaginer, out_dir=out_dir,
                              dataset=dataset, normalizer=normalizer)  # fmt: skip
    finally:  # also on errors and interrupts: actors would otherwise hold their CPUs until the driver exits
        for h in [*episodes.groups, *([handle] if handle is not None else [])]:
            ray.kill(h)


def _load(ckpt: str | Path) -> Any:
    from dinowm_core.training.checkpoint import load_world_model

    return load_world_model(ckpt)


# ---- the `dinowm plan` job ---------------------------------------------------------------------------------


def eval_shortcuts(overrides: list[str]) -> list[str]:
    """Evaluation keys accepted without the ``eval.`` prefix: ``n_evals=50 budget=50 seeds=[0,1,2]``."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"eval.{key}={value}" if sep and key.strip() in EvalConfig.model_fields else item)
    return out


def plan_checkpoint(
    ckpt: str,
    overrides: list[str],
    *,
    use_ray: bool = True,
    planner_actor: bool = False,
    out: str | Path | None = None,
    serve_url: str | None = None,
) -> tuple[EvalResult, Config, Path]:
    """Evaluate planning with a checkpoint and record it in MLflow -> (result, resolved config, output dir).

    ``ckpt``: a checkpoint directory or an MLflow reference (``runs:/ID[/checkpoint]``, ``models:/NAME/VERSION``,
    ``models:/NAME@ALIAS``, a registered model or run name: :func:`ray_jobs.runs.checkpoint_for`).
    ``overrides``: model keys on top of the checkpoint's config and the env's planning preset
    (``dinowm_core.presets.plan_config``), evaluation keys with or without ``eval.``, and job keys (``ray.*``,
    ``mlflow.*``). ``use_ray``: episodes in env actors (``planner_actor``: the model in a planner actor) or
    in-process. ``serve_url``: the episodes plan through the planning service there
    (:class:`serving.env_actor.ServicePolicy`), the checkpoint only imagines. Raises ``ConfigError`` / ``CheckpointError`` / ``ValueError`` / ``FileNotFoundError`` /
    ``LookupError`` with a message for the user.
    """
    from dinowm_core.evaluation.loop import check_model_env, evaluate
    from dinowm_core.presets import plan_config
    from dinowm_core.training.checkpoint import load_config_from_checkpoint, load_world_model
    from ray_jobs import tracking
    from ray_jobs.cluster import connect
    from ray_jobs.job_config import load_job_config, resolve_paths, split_job_overrides
    from ray_jobs.runs import checkpoint_for

    core, job_overrides = split_job_overrides(overrides)
    job = load_job_config(job_overrides)
    ckpt_dir = checkpoint_for(ckpt, core, job.mlflow).resolve()  # actors load it from elsewhere
    trained = load_config_from_checkpoint(ckpt_dir)
    cfg, job = resolve_paths(plan_config(trained, eval_shortcuts(core)), job)
    check_model_env(cfg, trained)
    out_dir = Path(out or Path(cfg.output_dir) / "plan" / f"{time.strftime('%Y%m%d_%H%M%S')}_{ckpt_dir.name}")
    out_dir = out_dir.resolve()
    policy = None
    if serve_url is not None:
        from serving.env_actor import evaluation_policy

        policy = evaluation_policy(serve_url, cfg, checkpoint=ckpt_dir)
    try:
        if use_ray:
            connect(job.ray)
            result = evaluate_on_ray(ckpt_dir, cfg, planner="actor" if planner_actor else "local",
                                     out_dir=out_dir, policy=policy)  # fmt: skip
        else:
            result = evaluate(load_world_model(ckpt_dir), cfg, out_dir=out_dir, policy=policy)
    finally:
        if policy is not None:
            policy.close()
    tracking.log_evaluation(result, cfg, job.mlflow, out_dir, ckpt)
    return result, cfg, out_dir


def summary_line(result: EvalResult, out_dir: Path) -> str:
    s = result.summary()
    lo, hi = s["success_ci95"]
    return (f"{result.protocol['policy']}: success {s['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}) over "
            f"{s['n']} episodes; {result.protocol['label']}; results in {out_dir}")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m ray_jobs.evaluate`` (tests/docs parses the documented commands with it)."""
    ap = argparse.ArgumentParser(
        description="Evaluate planning with a checkpoint, episodes in Ray env actors."
    )
    ap.add_argument(
        "ckpt",
        help="checkpoint directory, runs:/ID (or runs:/ID/checkpoint), models:/NAME/VERSION or @ALIAS, or a run name",
    )
    ap.add_argument("overrides", nargs="*", help="config overrides: env=wall n_evals=50 ray.address=auto ...")
    ap.add_argument("--planner-actor", action="store_true", help="the model in a planner actor")
    ap.add_argument("--serve-url", default=None, help="plan through the planning service at this URL")
    ap.add_argument("--out", "-o", default=None, help="output dir (default output_dir/plan/<time>)")
    ap.add_argument("--json", action="store_true", help="print the results JSON to stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``python -m ray_jobs.evaluate CKPT key=value ...``: ``dinowm plan --ray`` for ``ray job submit``."""
    from dinowm_core.config import ConfigError
    from dinowm_core.training.checkpoint import CheckpointError

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result, _, out_dir = plan_checkpoint(args.ckpt, args.overrides, planner_actor=args.planner_actor,
                                             out=args.out, serve_url=args.serve_url)  # fmt: skip
    except (ConfigError, CheckpointError, FileNotFoundError, LookupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(f"results in {out_dir}", file=sys.stderr)  # stdout stays one JSON document
    print(json.dumps(result.to_dict(), indent=2) if args.json else summary_line(result, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Planning evaluation on Ray: episodes in environment actors, one batched planner (reference section 5).

Glue around :func:`dinowm_core.evaluation.loop.run_evaluation`:

* **env actors**: ``EpisodeGroup`` (Ray-free) wrapped with ``ray.remote``; each owns its envs (one per
  episode slot) and runs ``reset / observe / step / results``. Every planning step the driver gathers the
  observations of all live actors, so the planner still plans the whole batch in one call;
* **planner**: in the driver (``planner="local"``) or a :class:`PlannerActor` holding the model
  (``planner="actor"``, e.g. on a GPU node). Both expose ``reset / plan / imagine``; a Serve deployment can
  take the actor's place behind the same three calls.

Per-episode results equal the in-process evaluation's for the same seeds (the planners draw one random
stream per episode). Usable with ``ray job submit -- python -m ray_jobs.evaluate CKPT env=wall ...``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray

from dinowm_core.config import Config
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

    def plan(self, obs: dict, goal: dict) -> Any:
        return self.policy.plan(obs, goal)

    def imagine(self, obs0: dict, actions: Any, final: dict, decode: bool) -> dict:
        return self.adapter.imagine(obs0, actions, final, decode)


class RemotePolicy:
    """Driver-side proxy: the :class:`~dinowm_core.evaluation.policy.Policy` protocol over a planner actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.closed_loop = ray.get(handle.closed_loop.remote())

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        ray.get(self.handle.reset.remote(episode_seeds, seed))

    def plan(self, obs: dict, goal: dict) -> Any:
        return ray.get(self.handle.plan.remote(obs, goal))

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
) -> EvalResult:
    """Evaluate with env actors. ``planner``: ``local`` (model in the driver; ``wm`` or ``ckpt``) or
    ``actor`` (a :class:`PlannerActor` loads ``ckpt``; ``planner_resources`` e.g. ``{"num_gpus": 1}``,
    default one CPU). The planner actor's resources are reserved before the env actors are sized."""
    from dinowm_core.envs.base import make_env
    from dinowm_core.evaluation.adapter import ModelAdapter, resolve_device
    from dinowm_core.evaluation.policy import build_policy

    e = cfg.eval
    if planner not in ("local", "actor"):
        raise ValueError(f"planner must be 'local' or 'actor', got {planner!r}")
    use_actor = planner == "actor" and e.policy == "planner"
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
            policy = build_policy(cfg, adapter=adapter, action_box=box)
            imaginer, normalizer = adapter, (adapter.normalizer if adapter else None)
        return run_evaluation(cfg, episodes, policy, target_env, imaginer=imaginer, out_dir=out_dir,
                              dataset=dataset, normalizer=normalizer)  # fmt: skip
    finally:  # also on errors and interrupts: actors would otherwise hold their CPUs until the driver exits
        for h in [*episodes.groups, *([handle] if handle is not None else [])]:
            ray.kill(h)


def _load(ckpt: str | Path) -> Any:
    from dinowm_core.training.checkpoint import load_world_model

    return load_world_model(ckpt)


def log_to_mlflow(result: EvalResult, cfg: Config, out_dir: Path, ckpt: str | None) -> str:
    """Record an evaluation as an MLflow run (same store as training: ``mlflow.tracking_uri``,
    ``$MLFLOW_TRACKING_URI`` or the embedded sqlite store under ``output_dir``): the protocol as params,
    the aggregated metrics, ``results.json`` and the videos. Returns the run id."""
    from ray_jobs import tracking

    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri, cfg.output_dir)
    tracker = tracking.RunTracker(
        uri, cfg.mlflow.experiment, tracking.default_artifact_location(uri, cfg.output_dir)
    )
    protocol = {k: v for k, v in result.protocol.items() if not isinstance(v, dict | list)}
    run_name = f"plan-{result.protocol['policy']}-{cfg.env.name}"
    tags = {
        "dinowm.kind": "evaluation",
        "env": cfg.env.name,
        "checkpoint": str(ckpt),
        "git_commit": tracking.git_commit(),
    }
    run_id = tracker.start(
        run_name, {"eval": protocol, "seeds": cfg.eval.seeds, "checkpoint": str(ckpt)}, tags
    )
    try:
        client = tracker.client
        for key, value in result.flat_metrics("plan").items():
            client.log_metric(run_id, key, float(value))
        client.log_artifact(run_id, str(Path(out_dir) / "results.json"))
        if (Path(out_dir) / "videos").is_dir():
            client.log_artifacts(run_id, str(Path(out_dir) / "videos"), artifact_path="videos")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_id


def init_ray(cfg: Config) -> None:
    """Connect to ``ray.address`` / ``$RAY_ADDRESS`` (``ray job submit``) or start a small local cluster."""
    if ray.is_initialized():
        return
    import os

    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.ray.address)
    else:
        ray.init(num_cpus=max(2, os.cpu_count() or 2), object_store_memory=500 * 1024**2,
                 include_dashboard=False)  # fmt: skip


if __name__ == "__main__":
    from ray_jobs.cli import app

    app(["plan", "--ray", *__import__("sys").argv[1:]])

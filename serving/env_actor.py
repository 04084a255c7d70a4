"""Environments that plan through the planning service (docs/serving.md).

* :class:`ServicePolicy` is a :class:`~dinowm_core.evaluation.policy.Policy` whose ``plan`` asks the service:
  one MPC session per episode (``act`` once per planning step) or one ``/v1/plan`` per episode for the
  open-loop planners, all episodes' requests in flight together so the service batches them. The existing
  evaluation loop runs unchanged with it (``dinowm plan CKPT --serve-url URL``).
* :class:`ServiceEnvActor` owns envs (an :class:`~dinowm_core.evaluation.episodes.EpisodeGroup`) and runs whole
  closed-loop episodes itself, asking the service over HTTP (or through a Serve deployment handle);
  :func:`evaluate_with_env_actors` spreads an evaluation's episodes over such actors.

Seeding: episode ``e`` of evaluation seed ``s`` plans from the RNG stream that
:class:`~dinowm_core.evaluation.policy.ModelPolicy` gives it, ``_mix(s, e)``, sent as the session's (or the
plan's) ``seed``; the service seeds one generator with it (``Planner.init_state(1, [seed])``), so an
episode's plans are the in-process evaluation's whatever else shares the service's batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinowm_core.evaluation.episodes import EpisodeGroup
from dinowm_core.evaluation.loop import (
    PROGRESS_INTERVAL_S,
    Episodes,
    add_imagination,
    run_batch,
    targets_for_seed,
)
from dinowm_core.evaluation.policy import _mix as episode_stream_seed  # ModelPolicy's per-episode seeds
from dinowm_core.evaluation.records import EpisodeOutcome
from serving import schemas
from serving.client import AsyncPlanningClient, Endpoints

log = logging.getLogger(__name__)

Obs = dict[str, np.ndarray]

#: PlannerParams fields each optimizer has; each lives in the config section of the planner's optimizer
_FIELDS = {
    "cem": ("num_samples", "topk", "var_scale", "opt_steps"),
    "icem": ("num_samples", "topk", "var_scale", "opt_steps", "beta"),
    "mppi": ("num_samples", "var_scale", "opt_steps", "beta", "temperature"),
    "gd": ("lr", "opt_steps"),
}
_OPTIMIZERS = tuple(_FIELDS)


def planner_params(planner_cfg: Any) -> dict[str, Any]:
    """A :class:`~dinowm_core.config.PlannerConfig` -> the service's planner settings (every field set, so the
    service plans with these values and not its checkpoint's defaults)."""
    p = planner_cfg
    kind = p.name.removeprefix("mpc_")
    out: dict[str, Any] = {"name": p.name, "horizon": p.horizon, "alpha": p.objective.alpha}
    out.update({k: getattr(getattr(p, kind), k) for k in _FIELDS[kind]})
    if p.name.startswith("mpc_"):
        out["n_taken_actions"] = p.mpc.n_taken_actions
    return out


def unsendable_differences(planner_cfg: Any, service_planner: dict[str, Any]) -> list[str]:
    """The planner settings that the request cannot carry and where the service's defaults differ from
    ``planner_cfg`` (e.g. ``objective.mode``): plans would differ from the in-process evaluation's."""
    want = planner_cfg.model_dump()
    kind = planner_cfg.name.removeprefix("mpc_")
    sent = {(kind, k) for k in _FIELDS[kind]} | {("mpc", "n_taken_actions"), ("objective", "alpha")}
    exact = {"kv_cache", "align", "compile", "chunk_size"}  # the same plans either way (tested in the core)
    out = []
    for key, value in want.items():
        if (
            key in ("name", "horizon", "end_at_budget")
            or key in exact
            or (key in _OPTIMIZERS and key != kind)
        ):
            continue  # another optimizer's settings do not change this planner's plans
        if isinstance(value, dict):
            for sub, v in value.items():
                have = (service_planner.get(key) or {}).get(sub)
                if (key, sub) not in sent and sub not in exact and have != v:
                    out.append(f"planner.{key}.{sub}: service {have!r}, here {v!r}")
        elif service_planner.get(key) != value:
            out.append(f"planner.{key}: service {service_planner.get(key)!r}, here {value!r}")
    return out


class _LoopThread:
    """A private asyncio loop in a daemon thread, so that sync callers (the evaluation loop, a Ray actor's
    method) can run the async client whatever loop their own thread has or lacks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="service-policy", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class ServicePolicy:
    """The Policy protocol over the planning service.

    ``service``: a base URL, an :class:`AsyncPlanningClient` or a Serve deployment handle (see
    :class:`HandleClient`); ``planner``: planner settings (:func:`planner_params` of the evaluation's
    config for an exact in-process match; None = the service's defaults); ``end_at_budget``: tell the service
    how many env steps each episode has left, so that its plans end there (``planner.end_at_budget``);
    ``client_kwargs`` go to :class:`AsyncPlanningClient` when ``service`` is a URL.
    """

    def __init__(
        self,
        service: Any,
        planner: dict[str, Any] | None = None,
        *,
        end_at_budget: bool = False,
        **client_kwargs: Any,
    ) -> None:
        self.end_at_budget = end_at_budget
        self._loop = _LoopThread()
        self.client = self._loop.run(_connect(service, client_kwargs))
        self.planner = dict(planner) if planner else None
        name = (self.planner or {}).get("name") or self._loop.run(self.client.models()).planner["name"]
        self.closed_loop = str(name).startswith("mpc_")
        self.seeds: list[int] = []
        self.sessions: list[str | None] = []
        #: the service's batch size of every answer of the last plan() call (how well it batched them)
        self.batch_sizes: list[int] = []
        #: answers received since this policy was made, and the planner calls that produced them: a call that
        #: batched b requests answers each with batch_size b, so it counts 1/b per answer (exact as long as
        #: this policy's requests are the only ones in its batches, or summed over all the policies that share)
        self.requests_answered = 0
        self.planner_calls = 0.0

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        """One RNG stream per episode, seeded as ModelPolicy seeds it; the previous episodes' sessions end."""
        self._loop.run(self._end_sessions())
        self.seeds = [episode_stream_seed(seed, s) for s in episode_seeds]
        self.sessions = [None] * len(self.seeds)

    def plan(
        self, obs: Obs, goal: Obs, steps_left: int | None = None, *, live: Sequence[bool] | None = None
    ) -> np.ndarray:
        """obs, goal {"visual": (B, H, W, 3), "proprio": (B, Dp)} -> env actions (B, n, d). ``live`` (B,):
        the episodes to plan for (default all); the others' rows are zeros and their sessions do not step.
        ``steps_left``: env steps left in the live episodes' budget (sent with ``end_at_budget``)."""
        b = len(obs["visual"])
        if b != len(self.seeds):
            raise RuntimeError(f"reset() was given {len(self.seeds)} episodes, plan() {b}")
        rows = list(range(b)) if live is None else [i for i in range(b) if live[i]]
        if not rows:
            raise ValueError("plan() with no live episode")
        left = steps_left if self.end_at_budget else None
        answers = self._loop.run(self._plan_rows(obs, goal, rows, left))
        self.batch_sizes = [a.batch_size for a in answers]
        self.requests_answered += len(answers)
        self.planner_calls += sum(1.0 / a.batch_size for a in answers)
        acts = [np.asarray(a.actions, np.float64) for a in answers]
        out = np.zeros((b, *acts[0].shape))
        for i, a in zip(rows, acts, strict=True):
            out[i] = a
        return out

    async def _plan_rows(self, obs: Obs, goal: Obs, rows: list[int], steps_left: int | None) -> list[Any]:
        def row(x: Obs, i: int) -> Obs:
            return {k: v[i] for k, v in x.items()}

        async def one(i: int) -> Any:
            if not self.closed_loop:
                return await self.client.plan(
                    row(obs, i), row(goal, i), self.planner, self.seeds[i], steps_left
                )
            if self.sessions[i] is None:
                info = await self.client.create_session(row(goal, i), self.planner, seed=self.seeds[i])
                self.sessions[i] = info.session_id
            return await self.client.act(self.sessions[i], row(obs, i), steps_left)

        return list(await asyncio.gather(*[one(i) for i in rows]))

    async def _end_sessions(self) -> None:
        live = [s for s in self.sessions if s is not None]
        self.sessions = [None] * len(self.sessions)
        results = await asyncio.gather(*[self.client.delete_session(s) for s in live], return_exceptions=True)
        for s, r in zip(live, results, strict=True):
            if isinstance(r, Exception):  # it expires by itself after the service's idle TTL
                log.warning("could not end session %s: %s", s, r)

    def close(self) -> None:
        """End the live sessions and the client."""
        if self._loop.thread.is_alive():
            self._loop.run(self._end_sessions())
            self._loop.run(self.client.aclose())
            self._loop.close()


def evaluation_policy(service: Any, cfg: Any, *, checkpoint: str | Path | None = None,
                      **client_kwargs: Any) -> ServicePolicy:  # fmt: skip
    """The :class:`ServicePolicy` of an evaluation under ``cfg``: its planner settings sent with every
    request; logs a warning when the service's model is not ``checkpoint`` (config digest) or when its
    defaults differ in settings a request cannot carry (plans would then differ from the in-process ones)."""
    policy = ServicePolicy(service, planner_params(cfg.planner), end_at_budget=cfg.planner.end_at_budget,
                           **client_kwargs)  # fmt: skip
    info = policy._loop.run(policy.client.models())
    if checkpoint is not None:
        digest = hashlib.sha256((Path(checkpoint) / "config.json").read_bytes()).hexdigest()
        if info.config_digest != digest:
            log.warning("the service plans with %s (config %s...), not %s (config %s...)", info.source,
                        info.config_digest[:12], checkpoint, digest[:12])  # fmt: skip
    for diff in unsendable_differences(cfg.planner, info.planner):
        log.warning("service planner differs from the evaluation's: %s", diff)
    return policy


async def _connect(service: Any, client_kwargs: dict[str, Any]) -> Any:
    """A URL -> an AsyncPlanningClient (made on the policy's loop), a Serve handle -> a HandleClient, anything
    else is taken as a client already (the async client's verbs)."""
    if isinstance(service, str):
        return AsyncPlanningClient(service, **client_kwargs)
    if type(service).__name__ == "DeploymentHandle":  # any attribute of a handle is a method: test the type
        return HandleClient(service)
    return service


class HandleClient:
    """The async client's verbs over a Serve deployment handle (``serve.get_app_handle``): the deployment's
    route methods called directly with the request models, no HTTP in between (nor auth, nor retries: a
    handle fails over between replicas itself)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def plan(
        self, obs: Obs, goal: Obs, planner: Any = None, seed: int = 0, steps_left: int | None = None
    ) -> Any:
        body = Endpoints("raw").plan(obs, goal, planner, seed, steps_left).body
        return await self.handle.plan.remote(schemas.PlanRequest.model_validate(body))

    async def create_session(self, goal: Obs, planner: Any = None, seed: int = 0) -> Any:
        body = Endpoints("raw").create_session(goal, planner, seed).body
        return await self.handle.create_session.remote(schemas.SessionCreate.model_validate(body))

    async def act(self, session_id: str, obs: Obs, steps_left: int | None = None) -> Any:
        req = schemas.ActRequest.model_validate(Endpoints("raw").act(session_id, obs, steps_left).body)
        return await self.handle.act.remote(session_id, req)

    async def delete_session(self, session_id: str) -> None:
        await self.handle.delete_session.remote(session_id)

    async def models(self) -> Any:
        return await self.handle.models.remote()

    async def aclose(self) -> None:
        pass


# ---- env actors that plan through the service -------------------------------------------------------


class ServiceEnvActor:
    """``n_slots`` envs that run whole closed-loop episodes, asking the service for every plan.

    Built from plain arguments (``ray.remote(ServiceEnvActor)`` places it anywhere); ``service`` as for
    :class:`ServicePolicy`. :meth:`run` is the evaluation loop's ``run_batch`` on this actor's envs: the
    same per-episode metrics, no driver in the planning loop.
    """

    def __init__(
        self,
        env_name: str,
        n_slots: int,
        *,
        img_size: int,
        budget: int,
        frameskip: int,
        service: Any,
        planner: dict[str, Any] | None = None,
        end_at_budget: bool = False,
        oracle_stop: bool = False,
        env_kwargs: dict[str, Any] | None = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.group = EpisodeGroup(env_name, n_slots, img_size=img_size, budget=budget, frameskip=frameskip,
                                  oracle_stop=oracle_stop, env_kwargs=env_kwargs)  # fmt: skip
        self.budget = budget
        self.policy = ServicePolicy(service, planner, end_at_budget=end_at_budget, **(client_kwargs or {}))
        self.closed_loop = self.policy.closed_loop

    def run(self, targets: list[Any], first_index: int, n_record: int, seed: int) -> list[EpisodeOutcome]:
        """Episodes ``first_index ...`` of evaluation seed ``seed`` to the end of their budget; the first
        ``n_record`` keep their frames."""
        live = _LivePolicy(self.policy, self.group)
        out = run_batch(Episodes([self.group], [len(targets)]), live, targets, seed, n_record, self.budget)
        for r in out:
            r.metrics.index += first_index
        return out

    def stats(self) -> dict[str, float]:
        """Plan answers received and the service's planner calls behind them (see :class:`ServicePolicy`)."""
        return {"requests": self.policy.requests_answered, "planner_calls": self.policy.planner_calls}

    def close(self) -> None:
        self.policy.close()


class _LivePolicy:
    """Asks only for the episodes of ``group`` still running (an oracle stop ends some early)."""

    def __init__(self, policy: ServicePolicy, group: EpisodeGroup) -> None:
        self.policy, self.group, self.closed_loop = policy, group, policy.closed_loop

    def reset(self, episode_seeds: list[int], seed: int) -> None:
        self.policy.reset(episode_seeds, seed)

    def plan(self, obs: Obs, goal: Obs, steps_left: int | None = None) -> np.ndarray:
        return self.policy.plan(obs, goal, live=~self.group.progress()[0], steps_left=steps_left)


def evaluate_with_env_actors(
    cfg: Any,
    service: Any,
    *,
    num_actors: int = 2,
    cpus_per_actor: float = 0.25,
    imaginer: Any = None,
    out_dir: str | Path | None = None,
    dataset: Any = None,
    normalizer: Any = None,
    client_kwargs: dict[str, Any] | None = None,
    stats: dict[str, float] | None = None,
) -> Any:
    """``run_evaluation`` with :class:`ServiceEnvActor` s planning through ``service`` (a URL or a deployment
    handle): every seed's episodes split in contiguous blocks over ``num_actors`` Ray actors, which run
    concurrently; results (and ``results.json``, videos) as the in-process evaluation's. ``stats``: a dict
    that receives the actors' summed :meth:`ServiceEnvActor.stats` (answers received, planner calls)."""
    import ray

    from dinowm_core.envs.base import make_env
    from dinowm_core.evaluation.loop import eval_dataset
    from dinowm_core.evaluation.report import EvalResult, protocol
    from dinowm_core.evaluation.video import write_episode_video
    from dinowm_core.presets import resolve_goal_H

    cfg = resolve_goal_H(cfg)
    e = cfg.eval
    size = e.render_size or cfg.img_size
    dataset = eval_dataset(cfg) if dataset is None else dataset
    n = max(1, min(num_actors, e.n_evals))
    per = math.ceil(e.n_evals / n)
    slots = [k for k in (min(per, e.n_evals - i * per) for i in range(n)) if k > 0]  # each actor exactly full
    # two threads: stats() answers (for the progress lines) while run() waits on the service
    actor_cls = ray.remote(num_cpus=cpus_per_actor, max_concurrency=2)(ServiceEnvActor)
    actors = [
        actor_cls.remote(
            cfg.env.name,
            k,
            img_size=size,
            budget=e.budget,
            frameskip=cfg.frameskip,
            service=service,
            planner=planner_params(cfg.planner),
            end_at_budget=cfg.planner.end_at_budget,
            oracle_stop=e.oracle_stop,
            env_kwargs=cfg.env.kwargs,
            client_kwargs=client_kwargs,
        )
        for k in slots
    ]
    target_env = make_env(cfg.env.name, img_size=size, **cfg.env.kwargs)
    result, out = EvalResult(protocol(cfg)), Path(out_dir) if out_dir is not None else None
    try:
        for seed in e.seeds:
            targets = targets_for_seed(cfg, target_env, seed, dataset, normalizer)
            starts = list(range(0, len(targets), per))
            refs = [
                a.run.remote(targets[s : s + per], s, max(0, min(per, e.n_plot_samples - s)), seed)
                for a, s in zip(actors, starts, strict=True)
            ]  # fmt: skip
            log.info("seed %d: %d episodes of %d env steps in %d env actors that plan through the service",
                     seed, len(targets), e.budget, len(actors))  # fmt: skip
            t0 = time.perf_counter()
            while len(ray.wait(refs, num_returns=len(refs), timeout=PROGRESS_INTERVAL_S)[0]) < len(refs):
                answered = sum(int(st["requests"]) for st in ray.get([a.stats.remote() for a in actors]))
                log.info("seed %d: %d plans answered by the service so far, %.0fs", seed, answered,
                         time.perf_counter() - t0)  # fmt: skip
            parts = ray.get(refs)
            results = [r for part in parts for r in part]
            if imaginer is not None:
                add_imagination(results, imaginer, cfg.frameskip)
            result.per_seed[seed] = [r.metrics for r in results]
            for r in results:
                if out is not None and r.frames is not None:
                    m = r.metrics
                    name = f"seed{seed}_ep{m.index:03d}_{'success' if m.success else 'failure'}.mp4"
                    write_episode_video(
                        out / "videos" / name, r.frames, r.imagined, r.goal_visual, cfg.frameskip, maps=r.maps
                    )
                    result.videos.append(str(Path("videos") / name))
    finally:  # end the actors' sessions, then the actors (also on errors and interrupts)
        for a in actors:
            try:
                if stats is not None:
                    for key, value in ray.get(a.stats.remote(), timeout=30).items():
                        stats[key] = stats.get(key, 0) + value
                ray.get(a.close.remote(), timeout=30)
            except Exception as err:  # a dead actor: its sessions expire after the service's idle TTL
                log.warning("env actor did not close its sessions: %s", err)
            ray.kill(a)
    if out is not None:
        result.write_json(out / "results.json")
    return result

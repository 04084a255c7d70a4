"""The planning service without a web framework (docs/serving.md): a loaded world model answering *lists* of
plan, session and rollout requests with as few planner calls as possible.

Requests whose resolved planner config is equal share one batched :meth:`Planner.plan` call; each gets its own
RNG stream (``planner.init_state(B, seeds)``), so its actions do not depend on its batch-mates. A bad request
becomes a :class:`RequestError` in its slot of the answer while the others are served.

Batch invariance on the CPU: BLAS computes a one-row product (a batch of one) with a different kernel, and so
different rounding, than the same row inside a larger product. A lone request is therefore encoded and
planned alongside a copy of itself (the copy's answer is dropped), which makes its actions bit-identical to
the same request planned in any batch. On a GPU no such guarantee is attempted (cuBLAS picks kernels by
shape), and lone requests are not padded.

Torch and the core only; ``mlflow`` and ``ray_jobs`` are imported by :meth:`PlanningService.load` alone, and
only for a reference that is not a directory.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dinowm_core.config import ConfigError, PlannerConfig
from dinowm_core.evaluation.adapter import ModelAdapter, resolve_device
from dinowm_core.planning.common import discrete_action_set, normalized_zero_action
from dinowm_core.planning.planner import Planner, PlanState, budget_horizon, make_planner
from dinowm_core.presets import apply_overrides
from dinowm_core.training.artifacts import to_uint8
from serving.images import decode_image, png_b64, square
from serving.schemas import (
    ActRequest,
    ActResponse,
    ModelInfo,
    Observation,
    PlannerParams,
    PlanRequest,
    PlanResponse,
    RolloutRequest,
    RolloutResponse,
    SessionCreate,
    SessionInfo,
    Timings,
)
from serving.sessions import MemorySessionStore, RequestError, SessionRecord, SessionStore

__all__ = ["PlanningService", "RequestError"]

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")

#: flat PlannerParams name -> dotted config key; "{kind}" is the planner's optimizer (cem, icem, mppi or gd) and
#: "{sampler}" the sampling optimizer whose settings apply (a gd planner keeps them in planner.cem, unused)
PLANNER_KEYS = {
    "name": "planner.name",
    "horizon": "planner.horizon",
    "num_samples": "planner.{sampler}.num_samples",
    "topk": "planner.{sampler}.topk",
    "var_scale": "planner.{sampler}.var_scale",
    "opt_steps": "planner.{kind}.opt_steps",
    "lr": "planner.gd.lr",
    "beta": "planner.{sampler}.beta",
    "temperature": "planner.mppi.temperature",
    "n_taken_actions": "planner.mpc.n_taken_actions",
    "alpha": "planner.objective.alpha",
}
#: the PlannerParams that a planner kind does not have (a request naming one is refused, not ignored)
NOT_FOR = {
    "cem": {"beta", "temperature"},
    "icem": {"temperature"},
    "mppi": {"topk"},
    "gd": {"beta", "temperature"},
}


# ---- plan states of several sessions in one batch --------------------------------------------------------


def _stack_states(states: Sequence[PlanState]) -> PlanState:
    """B one-episode states (same shapes) -> one B-episode state (its ``step`` is not meaningful)."""

    def cat(name: str) -> torch.Tensor | None:
        ts = [getattr(s, name) for s in states]
        return None if ts[0] is None else torch.cat([t.to(ts[0]) for t in ts])

    return PlanState(
        rng=torch.cat([s.rng for s in states]), rng_device=states[0].rng_device, warm_start=cat("warm_start"),
        past_actions=cat("past_actions"), step=0,
        memory={k: torch.cat([s.memory[k] for s in states]) for k in states[0].memory},
        warm_elites=cat("warm_elites"),
    )  # fmt: skip


def _row(state: PlanState, i: int, step: int) -> PlanState:
    """Episode ``i`` of a batched state, as a one-episode state at ``step``."""

    def one(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[i : i + 1].clone()

    return PlanState(
        rng=state.rng[i : i + 1].clone(), rng_device=state.rng_device, warm_start=one(state.warm_start),
        past_actions=one(state.past_actions), step=step,
        memory={k: one(v) for k, v in state.memory.items()}, warm_elites=one(state.warm_elites),
    )  # fmt: skip


def _shape_key(state: PlanState) -> tuple[Any, ...]:
    """States with equal keys stack into one batch."""
    shape = lambda t: None if t is None else tuple(t.shape[1:])  # noqa: E731
    return (state.rng_device, shape(state.warm_start), shape(state.past_actions), shape(state.warm_elites),
            tuple(sorted((k, tuple(v.shape[1:])) for k, v in state.memory.items())))  # fmt: skip


class _LRU(OrderedDict[K, V]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


@dataclass
class _Job:
    """One validated request of a batch: its slot in the answer, model inputs and planner."""

    slot: int
    cfg: PlannerConfig
    obs: dict[str, torch.Tensor]  # {"visual": (1, 1, 3, S, S), "proprio": (1, 1, Dp)}
    prep_s: float
    seed: int = 0
    goal: dict[str, torch.Tensor] | None = None
    session: tuple[str, SessionRecord, PlanState] | None = None
    horizon: int | None = (
        None  # a plan that ends with its episode's budget (``steps_left``); None: the full one
    )


# ---- the service -------------------------------------------------------------------------------------------


class PlanningService:
    """A world model behind plan / session / rollout verbs that take and return the v1 schemas.

    ``source`` names where the model came from (shown by :meth:`info`); ``sessions`` defaults to an
    in-process :class:`~serving.sessions.MemorySessionStore`.
    """

    def __init__(
        self,
        wm: Any,
        *,
        source: str,
        device: str | torch.device = "cpu",
        sessions: SessionStore | None = None,
    ) -> None:
        self.device = resolve_device(str(device))
        self.adapter = ModelAdapter(wm, device=self.device)
        self.wm, self.cfg, self.source = self.adapter.wm, wm.cfg, source
        self.sessions: SessionStore = sessions if sessions is not None else MemorySessionStore()
        self.digest = hashlib.sha256(self.cfg.to_json().encode()).hexdigest()  # == sha256 of its config.json
        self.zero_action = normalized_zero_action(
            self.adapter.normalizer, self.cfg.env.action_dim, self.cfg.frameskip
        ).to(self.device)
        self.action_set = discrete_action_set(self.adapter.normalizer)  # a discrete env's one-hots, else None
        self.pad_singletons = self.device.type == "cpu"  # see the module docstring
        self._configs: _LRU[str, PlannerConfig | RequestError] = _LRU(256)
        self._planners: _LRU[str, Planner] = _LRU(16)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        ref: str,
        *,
        device: str = "cpu",
        tracking_uri: str | None = None,
        cache_dir: str | Path | None = None,
        sessions: SessionStore | None = None,
    ) -> PlanningService:
        """A service for a checkpoint directory or an MLflow reference (``runs:/...``, ``models:/...``, a
        registered model or run name), resolved like the CLI's (``ray_jobs.runs.local_checkpoint``; store:
        ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``outputs/``'s; downloads into ``cache_dir``,
        default ``outputs/models``). Raises ``FileNotFoundError`` / ``LookupError`` when there is none."""
        from dinowm_core.training.checkpoint import load_world_model

        path = Path(ref).expanduser()
        if not path.is_dir():
            path = _fetch_checkpoint(ref, tracking_uri, cache_dir)
        wm = load_world_model(path, map_location=resolve_device(device))
        return cls(wm, source=str(ref), device=device, sessions=sessions)

    def info(self) -> ModelInfo:
        c = self.cfg
        return ModelInfo(
            source=self.source, env=c.env.name, config_digest=self.digest, img_size=c.img_size,
            action_dim=c.env.action_dim, proprio_dim=c.env.proprio_dim, frameskip=c.frameskip,
            planner=c.planner.model_dump(mode="json"),
        )  # fmt: skip

    # ---- validation -----------------------------------------------------------------------------------

    def planner_config(self, params: PlannerParams) -> PlannerConfig:
        """The checkpoint's planner config with the request's settings applied (the CLI's override function);
        RequestError(422, "planner.<name>") when they conflict."""
        key = params.model_dump_json(exclude_none=True)
        with self._lock:
            found = self._configs.get_or_make(key, lambda: self._resolve(params))
        if isinstance(found, RequestError):
            raise RequestError(found.status, found.field, found.message)
        return found

    def _resolve(self, params: PlannerParams) -> PlannerConfig | RequestError:
        base = self.cfg.planner
        name = params.name or base.name
        kind = name.removeprefix("mpc_")
        sampler = "cem" if kind == "gd" else kind
        given = params.model_dump(exclude_none=True)
        wrong = sorted(NOT_FOR[kind] & set(given))
        if wrong:
            return RequestError(422, f"planner.{wrong[0]}", f"planner {name!r} has no setting {wrong[0]!r}")
        section = getattr(base, sampler)
        num_samples = given.get("num_samples", section.num_samples)
        horizon = given.get("horizon", base.horizon)
        topk = given.get("topk", getattr(section, "topk", 1))
        if topk > num_samples:
            field = "topk" if "topk" in given else "num_samples"
            return RequestError(
                422, f"planner.{field}", f"topk ({topk}) must not exceed num_samples ({num_samples})"
            )
        n_taken = given.get("n_taken_actions", base.mpc.n_taken_actions)
        if name.startswith("mpc_") and n_taken > horizon:
            field = "n_taken_actions" if "n_taken_actions" in given else "horizon"
            return RequestError(
                422, f"planner.{field}", f"n_taken_actions ({n_taken}) must not exceed horizon ({horizon})"
            )
        keys = {k: PLANNER_KEYS[k].format(kind=kind, sampler=sampler) for k in given}
        try:
            cfg = apply_overrides(self.cfg, [f"{keys[k]}={v}" for k, v in given.items()])
        except ConfigError as e:
            field = next((f"planner.{k}" for k, dotted in keys.items() if dotted in str(e)), "planner")
            return RequestError(422, field, str(e))
        return cfg.planner

    def _prepare(self, obs: Observation, field: str) -> dict[str, torch.Tensor]:
        """One observation -> model inputs {"visual": (1, 1, 3, S, S), "proprio": (1, 1, Dp)}."""
        frame = square(decode_image(obs.visual, f"{field}.visual"))
        dp = self.cfg.env.proprio_dim
        if len(obs.proprio) != dp:
            raise RequestError(422, f"{field}.proprio", f"expected {dp} values, got {len(obs.proprio)}")
        proprio = np.asarray(obs.proprio, np.float64)
        if not np.isfinite(proprio).all():
            raise RequestError(422, f"{field}.proprio", "values must be finite")
        return self.adapter.obs_to_model({"visual": frame[None], "proprio": proprio[None]})

    def _horizon(self, cfg: PlannerConfig, steps_left: int | None) -> int | None:
        """The horizon of a plan with ``steps_left`` env steps left in its episode (None: the planner's)."""
        return None if steps_left is None else budget_horizon(cfg.horizon, self.cfg.frameskip, steps_left)

    def _planner(self, cfg: PlannerConfig) -> Planner:
        with self._lock:
            return self._planners.get_or_make(
                cfg.model_dump_json(),
                lambda: make_planner(cfg, self.wm, zero_action=self.zero_action, action_set=self.action_set),
            )

    # ---- batched model calls ---------------------------------------------------------------------------

    def _rows(self, n: int) -> list[int]:
        """Batch rows for n requests: a lone request gets a twin on the CPU (module docstring)."""
        return [0, 0] if n == 1 and self.pad_singletons else list(range(n))

    @torch.inference_mode()
    def _encode(self, obs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """n prepared observations -> latents {"visual": (n, 1, P, D), "proprio": (n, 1, E)}."""
        rows = self._rows(len(obs))
        batch = {k: torch.cat([obs[r][k] for r in rows]) for k in ("visual", "proprio")}
        z = self.wm.encode_obs(batch)
        return {k: v[: len(obs)] for k, v in z.items()}

    def _plan_batch(
        self,
        cfg: PlannerConfig,
        z_obs: dict[str, torch.Tensor],
        z_goal: dict[str, torch.Tensor],
        state: PlanState,
        horizon: int | None = None,
    ) -> tuple[np.ndarray, list[float], PlanState]:
        """B episodes -> (env actions (B, n, d), costs, next state), in one planner call (of ``horizon``
        steps: None = the planner's)."""
        n = state.batch_size
        rows = self._rows(n)
        if len(rows) != n:
            z_obs = {k: v[rows] for k, v in z_obs.items()}
            z_goal = {k: v[rows] for k, v in z_goal.items()}
            state = _stack_states([state] * len(rows)) if n == 1 else state
        result, nxt = self._planner(cfg).plan(z_obs, z_goal, state, horizon=horizon)
        actions = self.adapter.to_env_actions(result.execute[:n])
        return actions, result.loss[:n].float().tolist(), nxt

    # ---- verbs -----------------------------------------------------------------------------------------

    def plan(self, requests: Sequence[PlanRequest]) -> list[PlanResponse | RequestError]:
        """One answer per request, in order: a plan, or the RequestError that refused it."""
        out: list[PlanResponse | RequestError | None] = [None] * len(requests)
        groups: dict[tuple[str, int | None], list[_Job]] = {}
        for i, req in enumerate(requests):
            t0 = time.perf_counter()
            try:
                cfg = self.planner_config(req.planner)
                job = _Job(i, cfg, self._prepare(req.obs, "obs"), 0.0, seed=req.seed)
                job.goal = self._prepare(req.goal, "goal")
                job.horizon = self._horizon(cfg, req.steps_left)
            except RequestError as e:
                out[i] = e
                continue
            job.prep_s = time.perf_counter() - t0
            groups.setdefault((cfg.model_dump_json(), job.horizon), []).append(job)
        for jobs in groups.values():
            t0 = time.perf_counter()
            z_obs = self._encode([j.obs for j in jobs])
            z_goal = self._encode([j.goal for j in jobs])  # type: ignore[misc]
            t1 = time.perf_counter()
            planner = self._planner(jobs[0].cfg)
            state = planner.init_state(len(jobs), [j.seed for j in jobs], device=self.device)
            actions, costs, _ = self._plan_batch(jobs[0].cfg, z_obs, z_goal, state, jobs[0].horizon)
            t2 = time.perf_counter()
            for j, job in enumerate(jobs):
                out[job.slot] = PlanResponse(
                    actions=actions[j].tolist(), cost=costs[j], n_steps=len(actions[j]), batch_size=len(jobs),
                    timings=Timings(encode_s=job.prep_s + t1 - t0, plan_s=t2 - t1),
                )  # fmt: skip
        return out  # type: ignore[return-value]

    def create_session(self, req: SessionCreate) -> SessionInfo:
        """A new MPC session towards ``req.goal`` (its goal encoded once, its RNG stream at ``req.seed``)."""
        cfg = self.planner_config(req.planner)
        if not cfg.name.startswith("mpc_"):
            raise RequestError(
                422,
                "planner.name",
                f"a session needs an MPC planner (mpc_cem, mpc_icem, mpc_mppi or mpc_gd), got {cfg.name!r}",
            )
        z_goal = self._encode([self._prepare(req.goal, "goal")])
        state = self._planner(cfg).init_state(1, [req.seed], device=self.device)
        record = SessionRecord(
            goal=st_save({k: v.cpu().contiguous() for k, v in z_goal.items()}),
            planner=req.planner.model_dump_json(exclude_none=True), state=state.to_bytes(), model=self.digest,
        )  # fmt: skip
        return SessionInfo(session_id=self.sessions.create(record), expires_in_s=self.sessions.ttl_s)

    def delete_session(self, session_id: str) -> None:
        self.sessions.delete(session_id)

    def act(self, items: Sequence[tuple[str, ActRequest]]) -> list[ActResponse | RequestError]:
        """The next actions of each session, batched across sessions with equal planner settings; each
        session's plan state is written back to the store. A session named twice is served in order."""
        out: list[ActResponse | RequestError | None] = [None] * len(items)
        pending = list(range(len(items)))
        while pending:
            first: dict[str, int] = {}
            for i in pending:
                first.setdefault(items[i][0], i)
            self._act_round(items, list(first.values()), out)
            pending = [i for i in pending if i not in first.values()]
        return out  # type: ignore[return-value]

    def _act_round(self, items: Sequence[tuple[str, ActRequest]], slots: list[int], out: list[Any]) -> None:
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for i in slots:
            session_id, req = items[i]
            t0 = time.perf_counter()
            try:
                record = self.sessions.get(session_id)
                if record.model != self.digest:
                    raise RequestError(422, "session_id", "the session was created for another model")
                cfg = self.planner_config(PlannerParams.model_validate_json(record.planner))
                state = PlanState.from_bytes(record.state)
                job = _Job(i, cfg, self._prepare(req.obs, "obs"), 0.0, session=(session_id, record, state),
                           horizon=self._horizon(cfg, req.steps_left))  # fmt: skip
            except RequestError as e:
                out[i] = e
                continue
            job.prep_s = time.perf_counter() - t0
            groups.setdefault((cfg.model_dump_json(), _shape_key(state), job.horizon), []).append(job)
        for jobs in groups.values():
            t0 = time.perf_counter()
            z_obs = self._encode([j.obs for j in jobs])
            goals = [st_load(j.session[1].goal) for j in jobs]  # type: ignore[index]
            z_goal = {k: torch.cat([g[k] for g in goals]).to(self.device) for k in ("visual", "proprio")}
            t1 = time.perf_counter()
            state = _stack_states([j.session[2] for j in jobs])  # type: ignore[index]
            actions, costs, nxt = self._plan_batch(jobs[0].cfg, z_obs, z_goal, state, jobs[0].horizon)
            t2 = time.perf_counter()
            for j, job in enumerate(jobs):
                session_id, record, old = job.session  # type: ignore[misc]
                new = _row(nxt, j, old.step + 1)
                try:  # the session may have expired or been deleted meanwhile
                    self.sessions.put(session_id, replace(record, state=new.to_bytes()))
                except RequestError as e:
                    out[job.slot] = e
                    continue
                out[job.slot] = ActResponse(
                    actions=actions[j].tolist(), cost=costs[j], step=new.step, batch_size=len(jobs),
                    timings=Timings(encode_s=job.prep_s + t1 - t0, plan_s=t2 - t1),
                )  # fmt: skip

    @torch.inference_mode()
    def rollout(self, req: RolloutRequest) -> RolloutResponse:
        """The model's imagination of env actions from one observation: per-frame latent norms and, with
        ``decode`` and a decoder, the decoded frames as PNGs."""
        obs = self._prepare(req.obs, "obs")
        d, f = self.cfg.env.action_dim, self.cfg.frameskip
        bad = next((i for i, a in enumerate(req.actions) if len(a) != d), None)
        if bad is not None:
            raise RequestError(
                422, f"actions.{bad}", f"expected {d} values per step, got {len(req.actions[bad])}"
            )
        if len(req.actions) % f:
            raise RequestError(
                422, "actions", f"{len(req.actions)} steps is not a multiple of the frameskip ({f})"
            )
        act = self.adapter.to_model_actions(np.asarray(req.actions, np.float64)[None])
        z, _ = self.wm.rollout(obs, act)
        visual = z["visual"][0]  # (T, P, D)
        frames: list[str] = []
        if req.decode and self.wm.decoder is not None:
            images, _ = self.wm.decode_visual(z["visual"])
            frames = [png_b64(frame) for frame in to_uint8(images)[0]]
        return RolloutResponse(
            num_frames=visual.shape[0], latent_shape=list(visual.shape[1:]),
            latent_norm=visual.float().flatten(1).norm(dim=1).tolist(), frames=frames,
        )  # fmt: skip


def _fetch_checkpoint(ref: str, tracking_uri: str | None, cache_dir: str | Path | None) -> Path:
    """An MLflow reference -> a local checkpoint directory (the CLI's resolver; mlflow is imported there)."""
    from ray_jobs.runs import local_checkpoint
    from ray_jobs.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri(None, "outputs")
    return local_checkpoint(ref, uri, cache_dir=Path(cache_dir) if cache_dir else Path("outputs") / "models")

"""The Ray Serve application of the planning service: FastAPI routes over one :class:`PlanningService`.

The HTTP API (v1) is docs/serving.md. What this module adds to the Ray-free service:

- **batching**: concurrent ``POST /v1/plan`` requests are merged by ``@serve.batch`` into one
  ``service.plan(list)`` call (``act`` requests likewise into one ``service.act(list)``); ``max_batch_size``
  and ``batch_wait_s`` come from the app's args, and each answer's ``timings.queue_s`` is the time its request
  waited (for the batch to form and for the model);
- **one planner thread** per replica: every model call runs on it, so the event loop keeps answering
  (``/healthz``, deadlines) while a batch plans, and the service is never entered twice at once;
- **sessions** in a deployment-scoped actor (:mod:`serving.store_actor`), so any replica continues any session;
- **safety**: bearer-token auth when ``DINOWM_API_KEY`` is set where the app is built, the 8 MiB body limit,
  a per-request deadline (504) and ``{"detail", "field"}`` error bodies (:mod:`serving.guards`); overload is
  Serve's own 503 (``max_ongoing_requests`` / ``max_queued_requests``); the request id is Serve's
  (``X-Request-ID``, the client's if it sent one), on every response and in the replica's log lines;
- **metrics**: Serve's request counters and latency histograms, plus ``dinowm_serve_batch_size`` (requests
  per planner call) and the session counters below.

:func:`build_app` is the application builder for ``serve run`` / ``serve build`` / ``serve deploy``
(``import_path: serving.app:build_app``) and for ``dinowm serve``.
"""

# No `from __future__ import annotations`: Serve rewrites the route signatures in the replica, where string
# annotations (ForwardRef("PlanRequest")) no longer resolve and the OpenAPI schema fails.
import asyncio
import contextvars
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import metrics
from ray.serve.config import DeploymentActorConfig
from starlette.exceptions import HTTPException

from serving.guards import GuardMiddleware, install_error_handlers
from serving.schemas import (
    API_VERSION,
    MAX_BODY_BYTES,
    ActRequest,
    ActResponse,
    ErrorBody,
    ModelInfo,
    PlanRequest,
    PlanResponse,
    RolloutRequest,
    RolloutResponse,
    SessionCreate,
    SessionInfo,
)
from serving.sessions import RequestError

logger = logging.getLogger(__name__)

API_KEY_ENV = "DINOWM_API_KEY"
SESSIONS_ACTOR = "sessions"


class Autoscaling(BaseModel):
    """Serve's ``autoscaling_config`` (the common keys): replicas follow the ongoing requests per replica."""

    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(32, gt=0, description="about max_batch_size: full batches")
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(300, ge=0)


class AppArgs(BaseModel):
    """The args of :func:`build_app` (the ``args:`` of a Serve config, the options of ``dinowm serve``)."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(
        description="a checkpoint directory or an MLflow reference (runs:/..., models:/...)"
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI for runs:/ and models:/ references"
    )
    cache_dir: str | None = Field(None, description="where MLflow references are downloaded")
    device: str | None = Field(None, description="torch device; None = cuda with num_gpus > 0, else cpu")
    replicas: int = Field(1, ge=1, description="fixed replica count (ignored with autoscaling)")
    autoscaling: Autoscaling | None = None
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (a fraction shares one GPU)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per replica; None = num_cpus")
    max_batch_size: int = Field(32, ge=1, le=4096, description="requests merged into one planner call")
    batch_wait_s: float = Field(0.01, ge=0, le=10, description="how long a batch waits to fill")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504 past it)")
    max_ongoing_requests: int | None = Field(None, ge=1, description="per replica; None = 2 x max_batch_size")
    max_queued_requests: int = Field(512, ge=-1, description="waiting beyond this -> 503; -1 = no bound")
    retry_after_s: float = Field(1.0, ge=0, description="the Retry-After of a 503")
    session_ttl_s: float = Field(600.0, gt=0, description="idle seconds before a session expires")
    max_sessions: int = Field(1024, ge=1, description="live sessions at most (one more -> 429)")
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)


# ---- the HTTP surface -----------------------------------------------------------------------------------

api = FastAPI(
    title="dinowm planning service",
    version=API_VERSION,
    description="Plans actions with a DINO-WM world model (CEM / GD / MPC). See docs/serving.md.",
)
_bearer = HTTPBearer(auto_error=False, description=f"the service's {API_KEY_ENV}, when it has one")


def _replica() -> "PlanningDeployment":
    return serve.get_replica_context().servable_object


def _require_key(creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    key = _replica().api_key
    if key is None:
        return
    if creds is None or not secrets.compare_digest(creds.credentials.encode(), key.encode()):
        raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def _request_id_now() -> str | None:
    return serve.context._get_serve_request_context().request_id or None


install_error_handlers(api, RequestError)
api.add_middleware(GuardMiddleware, max_body_bytes=MAX_BODY_BYTES, request_id=_request_id_now,
                   timeout_s=lambda: _replica().args.request_timeout_s)  # fmt: skip

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in [
        (400, "malformed input: bad base64, not a PNG or JPEG, wrong raw byte count (the field is named)"),
        (401, "missing or wrong bearer token"),
        (404, "unknown or expired session"),
        (413, "body over 8 MiB"),
        (422, "invalid input (the field is named)"),
        (429, "too many live sessions"),
        (503, "overloaded: retry with backoff"),
        (504, "past the request deadline"),
    ]
}
_V1: dict[str, Any] = {"dependencies": [Security(_require_key)], "responses": _ERRORS}


@dataclass
class _Job:
    """One request waiting in a batch queue."""

    body: Any
    request_id: str | None
    enqueued: float  # time.perf_counter()


def _stamp(result: Any, job: _Job, started: float) -> Any:
    if isinstance(result, RequestError):
        return result
    result.timings.queue_s = max(0.0, started - job.enqueued)
    result.request_id = job.request_id
    return result


def _log_through_serve() -> None:
    """Send this package's log records (``serving.*``) to the replica's Serve log, whose lines carry the
    request id, route and replica of the request they belong to."""
    serve_logger = logging.getLogger("ray.serve")
    pkg = logging.getLogger("serving")
    pkg.handlers = list(serve_logger.handlers)
    pkg.setLevel(logging.INFO)
    pkg.propagate = False


@serve.deployment(name="planner")
@serve.ingress(api)
class PlanningDeployment:
    """One replica: a loaded :class:`PlanningService` and the thread that runs it."""

    def __init__(self, args: dict[str, Any], api_key: str | None = None) -> None:
        import torch

        from serving.service import PlanningService
        from serving.store_actor import ActorSessionStore

        self.args = AppArgs.model_validate(args)
        self.api_key = api_key or None
        _log_through_serve()
        torch.set_num_threads(self.args.torch_threads or max(1, round(self.args.num_cpus)))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dinowm-planner")
        self.sessions = ActorSessionStore(lambda: serve.get_deployment_actor(SESSIONS_ACTOR),
                                          self.args.session_ttl_s)  # fmt: skip
        device = self.args.device or ("cuda" if self.args.num_gpus > 0 else "cpu")
        self.service = PlanningService.load(
            self.args.checkpoint,
            device=device,
            sessions=self.sessions,
            tracking_uri=self.args.tracking_uri,
            cache_dir=self.args.cache_dir,
        )
        self._plan_batch.set_max_batch_size(self.args.max_batch_size)
        self._plan_batch.set_batch_wait_timeout_s(self.args.batch_wait_s)
        self._act_batch.set_max_batch_size(self.args.max_batch_size)
        self._act_batch.set_batch_wait_timeout_s(self.args.batch_wait_s)
        self._batch_sizes = metrics.Histogram(
            "dinowm_serve_batch_size", description="requests answered by one planner call",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], tag_keys=("kind",))  # fmt: skip
        self._sessions_created = metrics.Counter("dinowm_serve_sessions_created",
                                                 description="MPC sessions opened")  # fmt: skip
        self._sessions_live = metrics.Gauge("dinowm_serve_sessions_live",
                                            description="live MPC sessions of the app (the store's count when this replica last looked)")  # fmt: skip
        info = self.service.info()
        logger.info(
            "serving %s (%s, config %s) on %s", info.source, info.env, info.config_digest[:12], device
        )

    async def _on_planner(self, fn, *args) -> Any:
        # in the request's context, so that the service's log lines on the planner thread name the request
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._pool, ctx.run, fn, *args)

    async def _batched(self, kind: str, fn, jobs: list[_Job]) -> list[Any]:
        def call():
            started = time.perf_counter()
            return started, fn([j.body for j in jobs])

        started, results = await self._on_planner(call)
        self._batch_sizes.observe(len(jobs), tags={"kind": kind})
        logger.info("%s batch of %d: %s, %.3f s", kind, len(jobs), ",".join(str(j.request_id) for j in jobs),
                    time.perf_counter() - started)  # fmt: skip
        return [_stamp(r, j, started) for r, j in zip(results, jobs, strict=True)]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _plan_batch(self, jobs: list[_Job]) -> list[PlanResponse | RequestError]:
        return await self._batched("plan", self.service.plan, jobs)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _act_batch(self, jobs: list[_Job]) -> list[ActResponse | RequestError]:
        return await self._batched("act", self.service.act, jobs)

    async def _one(self, batch, body: Any) -> Any:
        result = await batch(_Job(body, _request_id_now(), time.perf_counter()))
        if isinstance(result, RequestError):
            raise result
        return result

    @api.post("/v1/plan", response_model=PlanResponse, summary="plan actions from obs to goal", **_V1)
    async def plan(self, req: PlanRequest) -> PlanResponse:
        return await self._one(self._plan_batch, req)

    @api.post("/v1/sessions", response_model=SessionInfo, status_code=201, summary="open an MPC session",
              **_V1)  # fmt: skip
    async def create_session(self, req: SessionCreate) -> SessionInfo:
        info = await self._on_planner(self.service.create_session, req)
        self._sessions_created.inc()
        await self._count_sessions()
        return info

    @api.post("/v1/sessions/{session_id}/act", response_model=ActResponse, summary="the session's next actions",
              **_V1)  # fmt: skip
    async def act(self, session_id: str, req: ActRequest) -> ActResponse:
        return await self._one(self._act_batch, (session_id, req))

    @api.delete("/v1/sessions/{session_id}", status_code=204, summary="close a session", **_V1)
    async def delete_session(self, session_id: str) -> Response:
        await asyncio.to_thread(self.service.delete_session, session_id)
        await self._count_sessions()
        return Response(status_code=204)

    @api.post("/v1/rollout", response_model=RolloutResponse, summary="imagine actions from obs", **_V1)
    async def rollout(self, req: RolloutRequest) -> RolloutResponse:
        return await self._on_planner(self.service.rollout, req)

    @api.get("/v1/models", response_model=ModelInfo, summary="the loaded model", **_V1)
    async def models(self) -> ModelInfo:
        return self.service.info()

    @api.get("/healthz", summary="the process is up (no auth)")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="the model is loaded", **_V1)
    async def readyz(self) -> dict[str, str]:
        return {"status": "ready", "model": self.service.info().config_digest}

    def __del__(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _count_sessions(self) -> None:
        try:
            self._sessions_live.set(await asyncio.to_thread(self.sessions.count))
        except Exception:  # a gauge is not worth failing a request for
            logger.debug("session count unavailable", exc_info=True)


def build_app(args: AppArgs) -> serve.Application:
    """The application from :class:`AppArgs` (Serve validates a config's ``args`` into it; a dict is
    validated here).

    Replicas: ``replicas`` or ``autoscaling``; ``num_cpus`` / ``num_gpus`` per replica. The API key is read
    from ``$DINOWM_API_KEY`` where the app is built (the ``dinowm serve`` process, or the cluster for ``serve
    deploy``: set it in the cluster's environment) and handed to the replicas; it is not one of the args, so
    ``serve status`` and the dashboard never show it.
    """
    cfg = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        "max_ongoing_requests": cfg.max_ongoing_requests or 2 * cfg.max_batch_size,
        "max_queued_requests": cfg.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": cfg.retry_after_s},
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
        "deployment_actors": [_sessions_actor(cfg)],
    }
    if cfg.autoscaling is not None:
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.replicas
    return PlanningDeployment.options(**options).bind(cfg.model_dump(), os.environ.get(API_KEY_ENV) or None)


def _sessions_actor(cfg: AppArgs) -> DeploymentActorConfig:
    from serving.store_actor import SessionStoreActor

    return DeploymentActorConfig(
        name=SESSIONS_ACTOR,
        actor_class=SessionStoreActor,
        init_kwargs={"ttl_s": cfg.session_ttl_s, "max_sessions": cfg.max_sessions},
        actor_options={"num_cpus": 0},
    )

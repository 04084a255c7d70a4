"""Clients of the planning service (docs/serving.md, API v1): :class:`PlanningClient` (sync) and
:class:`AsyncPlanningClient` (asyncio), the same verbs on both.

Observations go in as numpy, ``{"visual": uint8 (H, W, 3), "proprio": (Dp,)}``, and travel as the wire format
(raw ``{"shape", "dtype", "data"}`` base64 by default: lossless and cheap; ``image_format="png"`` for smaller
bodies); responses come back as the pydantic models of :mod:`serving.schemas`.

Retries: a 503 (overloaded) and a connection that could not be opened are retried ``retries`` times with
exponential backoff (``backoff_s * 2**attempt``, or the server's ``Retry-After`` when larger). A request that
may have reached the service (a dropped connection, a 500/502 from a replica that died) is retried only when
repeating it is harmless (``GET``, ``DELETE``, ``/v1/plan`` and ``/v1/rollout``, which are deterministic): a
repeated ``act`` would advance its session twice. A 4xx (and
a 504: its deadline is gone) raises :class:`ServiceError` at once. Every call sends one ``X-Request-ID``,
the same on all its attempts, so the service's logs tie them together.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

Obs = Mapping[str, np.ndarray]

#: statuses worth another attempt: the service was busy, nothing happened
RETRY_STATUS = frozenset({503})
#: statuses worth another attempt of a call that may be repeated: the replica serving it died (Serve's proxy
#: answers 500/502 for requests in flight on a replica that is being replaced)
RETRY_STATUS_IDEMPOTENT = frozenset({500, 502, 503})
#: errors raised before the request left this process: always safe to retry
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ServiceError(Exception):
    """A non-2xx answer of the service: ``status``, its ``detail`` message and the ``field`` it names."""

    def __init__(self, status: int, detail: str, field: str | None = None, request_id: str | None = None):
        self.status, self.detail, self.field, self.request_id = status, detail, field, request_id
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status}: {detail}{where}")


# ---- the wire format ---------------------------------------------------------------------------------


def encode_visual(visual: np.ndarray, image_format: str = "raw") -> str | dict[str, Any]:
    """uint8 (H, W, 3) -> ``{"shape", "dtype", "data"}`` (raw bytes, base64) or a base64 PNG string."""
    img = np.asarray(visual)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"visual must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    if image_format == "raw":
        data = base64.b64encode(np.ascontiguousarray(img).tobytes()).decode("ascii")
        return {"shape": list(img.shape), "dtype": "uint8", "data": data}
    if image_format == "png":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")
    raise ValueError(f"image_format must be 'raw' or 'png', got {image_format!r}")


def decode_visual(wire: str | Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_visual` (also reads the PNG frames of a rollout)."""
    if isinstance(wire, str):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(base64.b64decode(wire))).convert("RGB"))
    raw = np.frombuffer(base64.b64decode(wire["data"]), dtype=np.dtype(wire["dtype"]))
    return raw.reshape(wire["shape"])


def encode_obs(obs: Obs, image_format: str = "raw") -> dict[str, Any]:
    """One observation -> its JSON body. ``proprio`` as float64 values (JSON round-trips them exactly)."""
    proprio = np.asarray(obs["proprio"], np.float64)
    if proprio.ndim != 1:
        raise ValueError(f"proprio must be one vector (Dp,), got shape {proprio.shape}")
    return {"visual": encode_visual(obs["visual"], image_format), "proprio": proprio.tolist()}


def planner_body(planner: Any) -> dict[str, Any] | None:
    """Planner settings (a dict or the schema's model) -> JSON, unset fields left to the service."""
    if planner is None:
        return None
    if hasattr(planner, "model_dump"):
        return planner.model_dump(exclude_none=True)
    return {k: v for k, v in dict(planner).items() if v is not None}


# ---- one call, transport-free ------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] | None = None
    idempotent: bool = True  # may be repeated after it possibly reached the service
    parse: Callable[[httpx.Response], Any] | None = None


def _schema(name: str) -> Any:
    from serving import schemas

    return getattr(schemas, name)


def _model(name: str) -> Callable[[httpx.Response], Any]:
    return lambda r: _schema(name).model_validate(r.json())


def _error(r: httpx.Response, request_id: str) -> ServiceError:
    detail, field = r.reason_phrase or "error", None
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail, field = body["detail"], body.get("field")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI's own 422 shape
            field = field or ".".join(str(p) for p in detail[0].get("loc", ()) if p != "body") or None
            detail = "; ".join(str(d.get("msg", d)) for d in detail)
    return ServiceError(r.status_code, str(detail), field, r.headers.get("x-request-id", request_id))


def _delay(attempt: int, backoff_s: float, r: httpx.Response | None) -> float:
    delay = backoff_s * 2**attempt
    if r is not None:
        with contextlib.suppress(ValueError):  # an HTTP-date Retry-After: keep our own delay
            delay = max(delay, float(r.headers.get("retry-after", 0)))
    return delay


class Endpoints:
    """The endpoints as :class:`Call` values; the sync and async clients only differ in how they send."""

    def __init__(self, image_format: str) -> None:
        self.image_format = image_format

    def plan(self, obs: Obs, goal: Obs, planner: Any, seed: int, steps_left: int | None = None) -> Call:
        body = {"obs": encode_obs(obs, self.image_format), "goal": encode_obs(goal, self.image_format),
                "planner": planner_body(planner), "seed": int(seed), "steps_left": steps_left}  # fmt: skip
        return Call("POST", "/v1/plan", _drop_none(body), True, _model("PlanResponse"))

    def create_session(self, goal: Obs, planner: Any, seed: int) -> Call:
        body = {
            "goal": encode_obs(goal, self.image_format),
            "planner": planner_body(planner),
            "seed": int(seed),
        }
        return Call("POST", "/v1/sessions", _drop_none(body), False, _model("SessionInfo"))

    def act(self, session_id: str, obs: Obs, steps_left: int | None = None) -> Call:
        body = _drop_none({"obs": encode_obs(obs, self.image_format), "steps_left": steps_left})
        return Call("POST", f"/v1/sessions/{session_id}/act", body, False, _model("ActResponse"))

    def delete_session(self, session_id: str) -> Call:
        return Call("DELETE", f"/v1/sessions/{session_id}", None, True, None)

    def rollout(self, obs: Obs, actions: np.ndarray, decode: bool) -> Call:
        acts = np.asarray(actions, np.float64)
        if acts.ndim != 2:
            raise ValueError(f"actions must be (n_steps, action_dim) env units, got shape {acts.shape}")
        body = {"obs": encode_obs(obs, self.image_format), "actions": acts.tolist(), "decode": bool(decode)}
        return Call("POST", "/v1/rollout", body, True, _model("RolloutResponse"))

    def models(self) -> Call:
        return Call("GET", "/v1/models", None, True, _model("ModelInfo"))

    def healthz(self) -> Call:
        return Call("GET", "/healthz", None, True, lambda r: r.json())


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class _Base:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, retries: int, backoff_s: float,
                 image_format: str) -> None:  # fmt: skip
        if retries < 0 or backoff_s < 0:
            raise ValueError(f"retries and backoff_s must be >= 0, got {retries}, {backoff_s}")
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s, self.timeout_s = int(retries), float(backoff_s), float(timeout_s)
        self.calls = Endpoints(image_format)
        key = api_key if api_key is not None else os.environ.get("DINOWM_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _outcome(self, call: Call, r: httpx.Response, rid: str) -> Any:
        if r.status_code >= 400:
            raise _error(r, rid)
        return call.parse(r) if call.parse is not None else None

    def _retry(self, call: Call, attempt: int, r: httpx.Response | None, e: Exception | None) -> bool:
        if attempt >= self.retries:
            return False
        if r is not None:
            return r.status_code in (RETRY_STATUS_IDEMPOTENT if call.idempotent else RETRY_STATUS)
        return isinstance(e, _NOT_SENT) or (call.idempotent and isinstance(e, httpx.TransportError))


class PlanningClient(_Base):
    """Sync client. ``transport``: an httpx transport (tests pass ``httpx.MockTransport``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        image_format: str = "raw",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout_s, retries, backoff_s, image_format)
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=self.headers,
                                 transport=transport)  # fmt: skip
        self.sleep: Callable[[float], None] = time.sleep

    def _send(self, call: Call, request_id: str | None = None) -> Any:
        rid = request_id or uuid.uuid4().hex
        for attempt in range(self.retries + 1):
            r, err = None, None
            try:
                r = self.http.request(call.method, call.path, json=call.body, headers={"X-Request-ID": rid})
            except httpx.TransportError as e:
                err = e
            if self._retry(call, attempt, r, err):
                self.sleep(_delay(attempt, self.backoff_s, r))
                continue
            if err is not None:
                raise err
            return self._outcome(call, r, rid)
        raise AssertionError("unreachable")

    def plan(
        self, obs: Obs, goal: Obs, planner: Any = None, seed: int = 0, steps_left: int | None = None
    ) -> Any:
        """One open-loop plan (or an MPC planner's first chunk) -> ``PlanResponse``; ``steps_left`` as in
        :meth:`act`."""
        return self._send(self.calls.plan(obs, goal, planner, seed, steps_left))

    def create_session(self, goal: Obs, planner: Any = None, seed: int = 0) -> Any:
        """An MPC session towards ``goal`` -> ``SessionInfo`` (``session_id``, ``expires_in_s``)."""
        return self._send(self.calls.create_session(goal, planner, seed))

    def act(self, session_id: str, obs: Obs, steps_left: int | None = None) -> Any:
        """The next actions of a session from the current observation -> ``ActResponse``; ``steps_left``:
        env steps left in the episode's budget, where the plan then ends (default: a full-horizon plan)."""
        return self._send(self.calls.act(session_id, obs, steps_left))

    def delete_session(self, session_id: str) -> None:
        self._send(self.calls.delete_session(session_id))

    def rollout(self, obs: Obs, actions: np.ndarray, decode: bool = True) -> Any:
        """The model's imagination of env-unit ``actions`` (n_steps, d) from ``obs`` -> ``RolloutResponse``."""
        return self._send(self.calls.rollout(obs, actions, decode))

    def models(self) -> Any:
        return self._send(self.calls.models())

    def healthz(self) -> dict[str, Any]:
        return self._send(self.calls.healthz())

    def readyz(self) -> bool:
        """True when the model is loaded (asked once, no retries)."""
        try:
            return self.http.get("/readyz", headers={"X-Request-ID": uuid.uuid4().hex}).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.readyz():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout_s:g}s")
            self.sleep(poll_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PlanningClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPlanningClient(_Base):
    """Async client: the verbs of :class:`PlanningClient` as coroutines; concurrent calls share one
    connection pool (``max_connections``), which is what lets the service batch them."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        image_format: str = "raw",
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout_s, retries, backoff_s, image_format)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=self.headers,
                                      transport=transport, limits=limits)  # fmt: skip
        self.sleep: Callable[[float], Any] = asyncio.sleep

    async def _send(self, call: Call, request_id: str | None = None) -> Any:
        rid = request_id or uuid.uuid4().hex
        for attempt in range(self.retries + 1):
            r, err = None, None
            try:
                r = await self.http.request(
                    call.method, call.path, json=call.body, headers={"X-Request-ID": rid}
                )
            except httpx.TransportError as e:
                err = e
            if self._retry(call, attempt, r, err):
                await self.sleep(_delay(attempt, self.backoff_s, r))
                continue
            if err is not None:
                raise err
            return self._outcome(call, r, rid)
        raise AssertionError("unreachable")

    async def plan(
        self, obs: Obs, goal: Obs, planner: Any = None, seed: int = 0, steps_left: int | None = None
    ) -> Any:
        return await self._send(self.calls.plan(obs, goal, planner, seed, steps_left))

    async def create_session(self, goal: Obs, planner: Any = None, seed: int = 0) -> Any:
        return await self._send(self.calls.create_session(goal, planner, seed))

    async def act(self, session_id: str, obs: Obs, steps_left: int | None = None) -> Any:
        return await self._send(self.calls.act(session_id, obs, steps_left))

    async def delete_session(self, session_id: str) -> None:
        await self._send(self.calls.delete_session(session_id))

    async def rollout(self, obs: Obs, actions: np.ndarray, decode: bool = True) -> Any:
        return await self._send(self.calls.rollout(obs, actions, decode))

    async def models(self) -> Any:
        return await self._send(self.calls.models())

    async def healthz(self) -> dict[str, Any]:
        return await self._send(self.calls.healthz())

    async def readyz(self) -> bool:
        try:
            r = await self.http.get("/readyz", headers={"X-Request-ID": uuid.uuid4().hex})
        except httpx.TransportError:
            return False
        return r.status_code == 200

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncPlanningClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

"""What every HTTP request of the planning service passes through, whatever its endpoint (docs/serving.md).

- :class:`GuardMiddleware`: the body limit (``Content-Length`` and the bytes actually streamed: 413), the
  per-request deadline (504) and the last resort for an unexpected error (a logged 500 naming the request id,
  never a traceback in the answer);
- :func:`install_error_handlers`: every error answer has the body ``{"detail", "field"}``: pydantic's 422s
  are reshaped to name the first offending field as a dotted path, :class:`~serving.service.RequestError`
  keeps its status and field, and Starlette's HTTP errors (404 of an unknown route, 405, 401) get ``field:
  null``.

Starlette and FastAPI only (no Ray): tests drive it with an in-process ASGI client. The request id comes from
a callable so that the Serve app can read the one Serve's proxy assigned (the client's ``X-Request-ID``, if it
sent one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

# pydantic names a union member in an error's location ("visual", "ArrayB64", "shape"); such a tag is no field
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit} bytes ({limit / 2**20:g} MiB)")


def error_body(detail: str, field: str | None = None) -> dict[str, Any]:
    return {"detail": detail, "field": field}


def field_path(loc: tuple | list, body: Any = None, *, missing: bool = False) -> str | None:
    """pydantic's error location -> the dotted path of the field in the body the client sent
    (``obs.proprio.3``), None for the body as a whole.

    The ``body`` / ``path`` / ``query`` prefix is dropped, and so are the union-member tags pydantic puts in
    a location (``visual.array.shape``, ``visual.str``): with the ``body`` at hand, a step that is not a key
    (or index) of the value at that point is a tag, except the last step of a ``missing`` error. Without the
    body, tags are recognised by their look (``str``, ``ArrayB64``, ``function-after[...]``).
    """
    steps = list(loc[1:] if loc and loc[0] in ("body", "path", "query", "header") else loc)
    parts, node = [], body
    for i, item in enumerate(steps):
        if _has(node, item):
            node = node[item]
        elif _is_tag(item, body, last_missing=missing and i == len(steps) - 1):
            continue
        else:
            node = None
        parts.append(str(item))
    return ".".join(parts) or None


def _has(node: Any, item: Any) -> bool:
    if isinstance(node, dict):
        return item in node
    return isinstance(node, list) and isinstance(item, int) and -len(node) <= item < len(node)


def _is_tag(item: Any, body: Any, *, last_missing: bool) -> bool:
    if body is not None:
        return not last_missing
    return isinstance(item, str) and (item.lower() in _TYPE_TAGS or item[:1].isupper() or "[" in item)


def validation_body(errors: list[dict[str, Any]], body: Any = None) -> dict[str, Any]:
    """The most specific (deepest) pydantic error as ``{"detail", "field"}``; ``body``: the parsed request
    body, to name fields as the client sent them."""
    if not errors:
        return error_body("invalid request")
    err = max(errors, key=lambda e: len(e.get("loc", ())))
    if err.get("type") == "json_invalid":
        reason = (err.get("ctx") or {}).get("error", "")
        return error_body(f"the body is not valid JSON ({reason} at character {err['loc'][-1]})")
    loc = err.get("loc", ())
    if loc and loc[0] != "body":
        body = None  # a path or query parameter: no body to walk
    field = field_path(loc, body, missing=err.get("type") == "missing")
    msg = err.get("msg", "invalid value")
    if err.get("type") == "missing" and field is None:
        return error_body("a JSON body is required")
    return error_body(f"{field}: {msg}" if field else msg, field)


def install_error_handlers(app: FastAPI, request_error: type[Exception] | None = None) -> None:
    """Make every error answer ``{"detail", "field"}``; ``request_error``: the service's error class (it has
    ``status``, ``field`` and ``message``)."""

    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(list(exc.errors()), exc.body), status_code=422)

    async def on_http(_: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(error_body(detail), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    if request_error is not None:

        async def on_request_error(_: Request, exc: Any) -> JSONResponse:
            return JSONResponse(error_body(exc.message, exc.field), status_code=exc.status)

        app.add_exception_handler(request_error, on_request_error)


class GuardMiddleware:
    """Body limit, deadline and the catch-all 500 (pure ASGI, so the streamed body is counted as it comes).

    ``timeout_s`` and ``request_id`` are called per request: a Serve replica's settings are known only once
    it runs. A body over ``max_body_bytes`` is refused from its ``Content-Length`` before any of it is read,
    and again while it streams (chunked or lying clients).
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, timeout_s: Callable[[], float | None],
                 request_id: Callable[[], str | None]):  # fmt: skip
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def answer(status: int, body: dict[str, Any]) -> None:
            if not started:  # otherwise the client already has a status line: nothing better to do
                await JSONResponse(body, status_code=status)(scope, receive, send)

        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await answer(413, error_body(BodyTooLarge(self.max_body_bytes).detail))
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        t0 = time.monotonic()
        timeout = self.timeout_s()
        try:
            await asyncio.wait_for(self.app(scope, receive_limited, send_tracked), timeout)
        except BodyTooLarge as e:
            await answer(413, error_body(e.detail))
        except TimeoutError:
            logger.warning("%s %s: deadline of %.3g s passed after %.3g s", scope["method"], scope["path"],
                           timeout, time.monotonic() - t0)  # fmt: skip
            await answer(504, error_body(f"the request did not finish within its deadline of {timeout:g} s"))
        except Exception:
            rid = self.request_id()
            logger.exception("%s %s failed (request id %s)", scope["method"], scope["path"], rid)
            await answer(500, error_body(f"internal error (request id {rid}); see the service's log"))


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

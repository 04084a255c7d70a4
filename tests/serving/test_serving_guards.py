"""The HTTP guards without Ray: body limit (Content-Length and streamed), deadline, catch-all 500, error bodies."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from serving.guards import GuardMiddleware, field_path, install_error_handlers
from serving.sessions import RequestError

LIMIT = 1000


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    values: list[float] = Field(max_length=3)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    inner: Inner
    n: int = Field(1, ge=1, le=5)


def make_app(timeout_s: float | None = 5.0) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, RequestError)
    app.add_middleware(GuardMiddleware, max_body_bytes=LIMIT, timeout_s=lambda: timeout_s,
                       request_id=lambda: "rid-1")  # fmt: skip

    @app.post("/echo")
    async def echo(body: Body) -> dict:
        return body.model_dump()

    @app.post("/raw")
    async def raw(request: Request) -> dict:
        return {"n": len(await request.body())}

    @app.post("/refuse")
    async def refuse(body: Body) -> dict:
        raise RequestError(422, "inner.values", "wrong length for this model")

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internals")

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(5)
        return {}

    return app


def request(app: FastAPI, method: str, path: str, **kw) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def test_valid_body_passes():
    r = request(make_app(), "POST", "/echo", json={"inner": {"values": [1, 2]}, "n": 2})
    assert r.status_code == 200 and r.json() == {"inner": {"values": [1.0, 2.0]}, "n": 2}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inner": {"values": [1, 2, 3, 4]}}, "inner.values"),
        ({"inner": {"values": [1, "x"]}}, "inner.values.1"),
        ({"inner": {"values": [1]}, "n": 9}, "n"),
        ({"inner": {"values": [1]}, "typo": 1}, "typo"),
        ({"inner": {"values": [1], "more": 2}}, "inner.more"),
        ({}, "inner"),
    ],
)
def test_validation_errors_name_the_field(body, field):
    r = request(make_app(), "POST", "/echo", json=body)
    assert r.status_code == 422
    assert r.json()["field"] == field and r.json()["detail"].startswith(field + ":")
    assert set(r.json()) == {"detail", "field"}


def test_invalid_json_and_non_finite_numbers_are_422():
    r = request(
        make_app(), "POST", "/echo", content=b'{"inner": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = request(make_app(), "POST", "/echo", content=b'{"inner": {"values": [NaN]}}',
                headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "inner.values.0"


def test_request_error_keeps_its_status_and_field():
    r = request(make_app(), "POST", "/refuse", json={"inner": {"values": [1]}})
    assert r.status_code == 422
    assert r.json() == {"detail": "wrong length for this model", "field": "inner.values"}


def test_body_over_the_limit_by_content_length_is_413():
    r = request(make_app(), "POST", "/raw", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413 and r.json()["field"] is None
    assert request(make_app(), "POST", "/raw", content=b"x" * LIMIT).json() == {"n": LIMIT}


def test_streamed_body_over_the_limit_is_413():
    async def chunks():  # no Content-Length: chunked transfer
        for _ in range(5):
            yield b"y" * 300

    r = request(make_app(), "POST", "/raw", content=chunks())
    assert r.status_code == 413
    r = request(make_app(), "POST", "/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unexpected_error_is_a_500_naming_the_request_id_without_internals(caplog):
    r = request(make_app(), "GET", "/boom")
    assert r.status_code == 500
    assert "rid-1" in r.json()["detail"] and "secret" not in r.text
    assert any("rid-1" in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_deadline_is_504():
    r = request(make_app(timeout_s=0.05), "GET", "/slow")
    assert r.status_code == 504 and "deadline" in r.json()["detail"]


def test_unknown_route_and_method_keep_the_error_shape():
    r = request(make_app(), "GET", "/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found", "field": None}
    assert request(make_app(), "GET", "/echo").status_code == 405


def test_field_path_names_the_field_as_sent():
    body = {"obs": {"visual": {"shape": [2048, 2, 3]}}, "n": 1}
    assert field_path(("body", "obs", "visual", "array", "shape", 0), body) == "obs.visual.shape.0"
    assert field_path(("body", "obs", "visual", "ArrayB64", "shape", 0)) == "obs.visual.shape.0"
    assert field_path(("body", "obs", "visual", "str")) == "obs.visual"
    assert field_path(("body", "goal"), body, missing=True) == "goal"
    assert field_path(("body", "obs", "visual", "array", "data"), body, missing=True) == "obs.visual.data"
    assert field_path(("path", "session_id")) == "session_id"
    assert field_path(("body",), body) is None

"""The planning client's own logic: the wire format of observations and its retries / errors, against an
in-process httpx transport that checks every body against the service's schemas (no server, no sleeps)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from serving import schemas
from serving.client import (
    AsyncPlanningClient,
    PlanningClient,
    ServiceError,
    decode_visual,
    encode_obs,
    encode_visual,
)

RNG = np.random.default_rng(0)
OBS = {"visual": RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8), "proprio": np.array([0.1, -2.5e-7, 1 / 3])}
GOAL = {"visual": RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8), "proprio": np.array([1.0, 2.0, 3.0])}
PLAN = {"actions": [[0.5, -0.25]] * 5, "cost": 1.5, "n_steps": 5, "batch_size": 2, "request_id": "x"}
ACT = {**{k: v for k, v in PLAN.items() if k != "n_steps"}, "step": 1}


@pytest.mark.parametrize("image_format", ["raw", "png"])
def test_observations_round_trip_exactly_and_fit_the_schema(image_format):
    body = encode_obs(OBS, image_format)
    parsed = schemas.Observation.model_validate_json(json.dumps(body))
    visual = parsed.visual if isinstance(parsed.visual, str) else parsed.visual.model_dump()
    assert np.array_equal(decode_visual(visual), OBS["visual"])
    assert np.array_equal(np.array(parsed.proprio), OBS["proprio"])  # float64 survives JSON unchanged
    if image_format == "raw":
        assert body["visual"]["shape"] == [7, 5, 3]
        assert base64.b64decode(body["visual"]["data"]) == OBS["visual"].tobytes()


def test_bad_observations_fail_before_sending():
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        encode_visual(OBS["visual"].astype(np.float32))
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        encode_visual(OBS["visual"][None])
    with pytest.raises(ValueError, match="one vector"):
        encode_obs({"visual": OBS["visual"], "proprio": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="'raw' or 'png'"):
        encode_visual(OBS["visual"], "jpeg2000")


class Script:
    """A transport answering from a list: a status (+ optional JSON / headers) or an exception per attempt."""

    def __init__(self, *answers):
        self.answers, self.requests = list(answers), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = (
            (*answer, None, None)[:3] if isinstance(answer, tuple) else (answer, None, None)
        )
        return httpx.Response(status, json=body, headers=headers)

    def body(self, i: int, model):
        return model.model_validate_json(self.requests[i].content)


def client(script, **kw) -> PlanningClient:
    c = PlanningClient("http://planner.test", transport=httpx.MockTransport(script), **kw)
    c.sleeps = []
    c.sleep = c.sleeps.append
    return c


def test_plan_sends_a_valid_request_and_parses_the_response():
    script = Script((200, PLAN))
    out = client(script).plan(OBS, GOAL, planner={"name": "cem", "horizon": 5, "topk": None}, seed=7)
    assert isinstance(out, schemas.PlanResponse) and out.actions == PLAN["actions"] and out.batch_size == 2
    req = script.body(0, schemas.PlanRequest)
    assert (
        req.seed == 7 and req.planner.name == "cem" and req.planner.horizon == 5 and req.planner.topk is None
    )
    assert script.requests[0].url.path == "/v1/plan"


def test_503_is_retried_with_exponential_backoff_under_one_request_id():
    script = Script(503, 503, (200, PLAN))
    c = client(script, backoff_s=0.1, retries=3)
    c.plan(OBS, GOAL)
    assert len(script.requests) == 3 and c.sleeps == [0.1, 0.2]
    ids = {r.headers["x-request-id"] for r in script.requests}
    assert len(ids) == 1 and len(ids.pop()) >= 16


def test_retry_after_is_honoured_and_retries_end():
    script = Script((503, {"detail": "overloaded", "field": None}, {"Retry-After": "2"}), 503, 503)
    c = client(script, backoff_s=0.1, retries=2)
    with pytest.raises(ServiceError) as e:
        c.plan(OBS, GOAL)
    assert e.value.status == 503 and len(script.requests) == 3 and c.sleeps == [2.0, 0.2]


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 429, 504])
def test_4xx_and_504_raise_at_once_with_the_field(status):
    script = Script((status, {"detail": "proprio must have 4 values", "field": "obs.proprio"}))
    c = client(script)
    with pytest.raises(ServiceError) as e:
        c.act("abc", OBS)
    assert (e.value.status, e.value.detail, e.value.field) == (
        status,
        "proprio must have 4 values",
        "obs.proprio",
    )
    assert len(script.requests) == 1 and c.sleeps == []


def test_fastapi_validation_errors_are_read_too():
    body = {"detail": [{"loc": ["body", "obs", "proprio"], "msg": "Field required", "type": "missing"}]}
    with pytest.raises(ServiceError, match="Field required") as e:
        client(Script((422, body))).plan(OBS, GOAL)
    assert e.value.field == "obs.proprio"


def test_connection_errors_are_retried_but_an_act_that_may_have_arrived_is_not():
    refused = httpx.ConnectError("refused")
    script = Script(refused, refused, (200, ACT))
    c = client(script)
    assert c.act("s1", OBS).step == 1 and len(script.requests) == 3  # never sent: safe to repeat
    lost = httpx.ReadError("connection reset")
    script = Script(lost, (200, ACT))
    with pytest.raises(httpx.ReadError):  # the session may have advanced: the caller decides
        client(script).act("s1", OBS)
    assert len(script.requests) == 1
    script = Script(lost, (200, PLAN))
    assert client(script).plan(OBS, GOAL).n_steps == 5 and len(script.requests) == 2  # a plan is idempotent


def test_a_dead_replicas_500_is_retried_for_a_plan_but_not_for_an_act():
    script = Script(500, 502, (200, PLAN))  # Serve's proxy: the replica serving the request died
    assert client(script).plan(OBS, GOAL).n_steps == 5 and len(script.requests) == 3
    script = Script(500, (200, ACT))
    with pytest.raises(ServiceError) as e:  # the session may have advanced: the caller decides
        client(script).act("s1", OBS)
    assert e.value.status == 500 and len(script.requests) == 1


def test_sessions_rollout_models_and_auth(monkeypatch):
    monkeypatch.setenv("DINOWM_API_KEY", "k-env")
    info = {"source": "/ckpt", "env": "wall", "config_digest": "d", "img_size": 64, "action_dim": 2,
            "proprio_dim": 3, "frameskip": 5, "planner": {"name": "cem"}}  # fmt: skip
    roll = {"num_frames": 2, "latent_shape": [16, 8], "latent_norm": [1.0, 2.0], "frames": []}
    script = Script((201, {"session_id": "s9", "expires_in_s": 600}), (200, ACT), 204, (200, roll),
                    (200, info), (200, {"status": "ok"}))  # fmt: skip
    c = client(script)
    assert c.create_session(GOAL, {"name": "mpc_cem"}, seed=3).session_id == "s9"
    assert c.act("s9", OBS).step == 1
    assert c.delete_session("s9") is None
    assert c.rollout(OBS, np.zeros((5, 2))).num_frames == 2
    assert c.models().frameskip == 5 and c.healthz() == {"status": "ok"}
    assert script.body(0, schemas.SessionCreate).seed == 3
    assert script.body(1, schemas.ActRequest).obs.proprio == OBS["proprio"].tolist()
    assert script.body(3, schemas.RolloutRequest).decode is True
    paths = [(r.method, r.url.path) for r in script.requests]
    assert paths == [("POST", "/v1/sessions"), ("POST", "/v1/sessions/s9/act"), ("DELETE", "/v1/sessions/s9"),
                     ("POST", "/v1/rollout"), ("GET", "/v1/models"), ("GET", "/healthz")]  # fmt: skip
    assert {r.headers["authorization"] for r in script.requests} == {"Bearer k-env"}
    script = Script((200, {"status": "ok"}))
    client(script, api_key="k-arg").healthz()
    assert script.requests[0].headers["authorization"] == "Bearer k-arg"
    monkeypatch.delenv("DINOWM_API_KEY")
    script = Script((200, {"status": "ok"}))
    client(script).healthz()
    assert "authorization" not in script.requests[0].headers


def test_async_client_retries_and_runs_calls_concurrently():
    script = Script(503, (200, PLAN), (200, PLAN), (200, PLAN))

    async def main():
        c = AsyncPlanningClient("http://planner.test", transport=httpx.MockTransport(script), backoff_s=0.05)
        slept = []

        async def sleep(s):
            slept.append(s)

        c.sleep = sleep
        async with c:
            out = await asyncio.gather(*[c.plan(OBS, GOAL, seed=i) for i in range(3)])
        return out, slept

    out, slept = asyncio.run(main())
    assert [o.n_steps for o in out] == [5, 5, 5] and slept == [0.05] and len(script.requests) == 4
    seeds = sorted(script.body(i, schemas.PlanRequest).seed for i in range(4))
    assert seeds == [0, 0, 1, 2]  # the 503'd request was sent again, with its own seed


def test_the_client_imports_without_torch_ray_or_a_web_framework():
    """A robot or a notebook installs httpx, numpy and pydantic, not the model's stack."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'ray', 'fastapi', 'starlette', 'mlflow', 'dinowm_core'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import serving.client\n"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]

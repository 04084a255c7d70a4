"""The Serve app with an API key and tight limits: 401 without or with a wrong token (``/healthz`` open), the
deadline (504) and overload (503)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serving.conftest import obs, run_app

pytestmark = [pytest.mark.ray, pytest.mark.serving, pytest.mark.slow]

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(serve_url, tiny_ckpt):
    from ray import serve

    # One request at a time, one more queued, and a batch that waits 2 s for company: a third concurrent request
    # finds no room, and a plan request outlives its 0.5 s deadline (see the deadline test's planner budget).
    args = {"checkpoint": str(tiny_ckpt), "max_batch_size": 8, "batch_wait_s": 2.0, "request_timeout_s": 0.5,
            "max_ongoing_requests": 1, "max_queued_requests": 1}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DINOWM_API_KEY", KEY)  # read where the app is built
        url = run_app(args, "limits", "/limits", serve_url)
    yield url
    serve.delete("limits")


def plan_body() -> dict:
    return {"obs": obs(2, 0), "goal": obs(2, 1), "planner": {"name": "cem"}}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
                         ids=["none", "wrong", "not-bearer"])  # fmt: skip
def test_without_the_key_every_v1_route_is_401(app, headers):
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/plan", plan_body()),
                               ("POST", "/v1/plan", {"bad": "body"}), ("POST", "/v1/sessions/x/act", {}),
                               ("DELETE", "/v1/sessions/x", None), ("POST", "/v1/rollout", {}),
                               ("GET", "/readyz", None)]:  # fmt: skip
        r = httpx.request(method, f"{app}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, r.text)  # before the body is looked at
        assert r.json()["field"] is None and r.headers["www-authenticate"] == "Bearer"


def test_with_the_key_requests_pass_and_healthz_is_open(app):
    assert httpx.get(f"{app}/healthz").status_code == 200
    assert httpx.get(f"{app}/v1/models", headers=AUTH).json()["env"] == "wall"
    r = httpx.post(
        f"{app}/v1/plan", json={**plan_body(), "planner": {"horizon": 0}}, headers=AUTH, timeout=30
    )
    assert r.status_code == 422 and r.json()["field"] == "planner.horizon"


def test_deadline_is_504_and_overload_is_503(app):
    # The planning alone takes over 1 s on this model (the checkpoint's 12 x 2 CEM takes ~0.02 s), so a request
    # that reaches a batch just as it fires still misses the deadline.
    slow = {**plan_body(), "planner": {"name": "cem", "num_samples": 128, "opt_steps": 30}}

    def plan(_):
        return httpx.post(f"{app}/v1/plan", json=slow, headers=AUTH, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(plan, range(4)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {503, 504} and codes.count(504) >= 1, codes
    assert all(r.headers["retry-after"] == "1" for r in answers if r.status_code == 503)
    late = next(r for r in answers if r.status_code == 504)
    assert "deadline of 0.5 s" in late.json()["detail"] and late.headers["x-request-id"]

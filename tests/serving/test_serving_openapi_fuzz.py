"""Schema fuzzing: requests generated from the service's own OpenAPI document (schemathesis, bounded examples per
operation, derandomized) never get a 5xx, whatever they contain."""

from __future__ import annotations

import httpx
import pytest

from tests.serving.conftest import run_app

pytestmark = [pytest.mark.ray, pytest.mark.serving, pytest.mark.slow]

APP = "fuzz"
EXAMPLES = 25  # per operation: ~200 requests in all, a minute on two cores


@pytest.fixture(scope="module")
def app(serve_url, tiny_ckpt):
    from ray import serve

    url = run_app(
        {"checkpoint": str(tiny_ckpt), "num_cpus": 0.5, "torch_threads": 1}, APP, f"/{APP}", serve_url
    )
    yield url
    serve.delete(APP)


def test_generated_requests_never_get_a_server_error(app):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict(httpx.get(f"{app}/openapi.json", timeout=30).json())
    server_errors: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/plan", "/v1/sessions", "/v1/rollout", "/v1/models"}
    for op in operations:

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy())
        def call(case) -> None:
            response = case.call(base_url=app, timeout=60)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                     f"{response.text[:200]}")  # fmt: skip

        call()
    assert not server_errors, server_errors[:5]
    assert len(statuses) >= 5 * len(operations) and {400, 422} & set(
        statuses
    )  # it did send (mostly bad) requests

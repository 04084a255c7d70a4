"""``serve deploy serving/serve_config.yaml`` to a ``ray start --head`` cluster with token auth: the app comes up
on its 127.0.0.1 port, with the API key of the cluster's environment, and ``serve shutdown`` removes it.

The head is tests/ray's job-submission head (own temp dir, free ports, own token file, stopped by PID); its
environment here also has this checkout on PYTHONPATH (the replicas import ``serving``) and DINOWM_API_KEY.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.ray.test_ray_job_submit import head_cluster  # noqa: F401 - the fixture
from tests.serving.conftest import free_port, obs

pytestmark = [pytest.mark.ray, pytest.mark.serving, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).parent / "serve")
KEY = "deploy-key-42"


@pytest.fixture(scope="module", autouse=True)
def _head_environment():
    """What the head (started after this) passes on to the controller and replicas."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(REPO))
        mp.setenv("DINOWM_API_KEY", KEY)
        yield


def test_serve_deploy_of_the_config(head_cluster, tiny_ckpt, tmp_path):  # noqa: F811
    address, env = head_cluster
    port = free_port()
    cfg = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    cfg["http_options"]["port"] = port
    cfg["applications"][0]["args"].update(checkpoint=str(tiny_ckpt), max_batch_size=4)
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([SERVE, "deploy", str(tmp_path / "serve.yaml"), "-a", address], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # deploying is asynchronous: poll the app's readiness
            try:
                r = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the deployed app never became ready"
            time.sleep(1)
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        r = httpx.post(f"{url}/v1/plan", json={"obs": obs(2, 0), "goal": obs(2, 1)},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
    finally:
        done = subprocess.run([SERVE, "shutdown", "-y", "-a", address], env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)

"""serving/serve_config.yaml is a valid ``serve deploy`` config whose args build the app the way Serve builds it
(no cluster: building binds the deployment, it loads no model); the builder maps replicas, autoscaling, GPUs
and limits onto the deployment's options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "serving" / "serve_config.yaml"


def _build(args: dict):
    """What ``serve deploy`` / ``serve run`` do with an import path and args (args validated into AppArgs)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr

    app_cfg = yaml.safe_load(CONFIG.read_text())["applications"][0]
    return call_user_app_builder_with_args_if_necessary(import_attr(app_cfg["import_path"]), args)


def _options(application) -> tuple[dict, tuple]:
    deployment = application._bound_deployment
    return deployment, deployment.init_args


def test_the_yaml_is_a_serve_deploy_config_and_builds():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "serving.app:build_app" and schema.http_options.host == "127.0.0.1"
    deployment, (args, api_key) = _options(_build(app.args))
    assert deployment.num_replicas == 1 and args["checkpoint"].startswith("models:/")
    assert (args["max_batch_size"], args["batch_wait_s"]) == (32, 0.01)
    assert deployment.max_ongoing_requests == 64 and deployment.max_queued_requests == 512
    assert deployment.ray_actor_options == {"num_cpus": 1, "num_gpus": 0}
    assert [a.name for a in deployment._deployment_config.deployment_actors] == ["sessions"]
    assert api_key is None


def test_autoscaling_gpus_and_the_api_key(monkeypatch):
    monkeypatch.setenv("DINOWM_API_KEY", "secret-key-9")
    args = {"checkpoint": "/ckpt", "num_gpus": 0.5, "num_cpus": 2, "max_batch_size": 128,
            "autoscaling": {"min_replicas": 1, "max_replicas": 3}}  # fmt: skip
    deployment, (built, api_key) = _options(_build(args))
    auto = deployment._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 3, 32)
    assert deployment.ray_actor_options == {"num_cpus": 2, "num_gpus": 0.5}
    assert (
        deployment.max_ongoing_requests == 256
        and api_key == "secret-key-9"
        and "secret-key-9" not in str(built)
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [({"checkpoint": "/c", "replicas": 0}, "replicas"), ({"checkpoint": "/c", "typo": 1}, "typo"),
     ({}, "checkpoint"), ({"checkpoint": "/c", "autoscaling": {"max_replicas": 0}}, "max_replicas")],
)  # fmt: skip
def test_bad_args_are_refused_naming_the_key(args, field):
    with pytest.raises(Exception, match=field):
        _build(args)

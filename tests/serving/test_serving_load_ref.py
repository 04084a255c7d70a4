"""PlanningService.load takes MLflow references like the CLI: a run's checkpoint or a registered model version,
downloaded once into the cache directory; the service reports the reference it was given."""

from __future__ import annotations

import hashlib

import pytest

from serving.service import PlanningService
from tests.serving.serving_helpers import serving_checkpoint

MODEL = "dinowm-serving-model"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from ray_jobs import tracking

    out = tmp_path_factory.mktemp("store")
    ckpt = serving_checkpoint(out / "src")
    uri = tracking.tracking_uri(None, out)
    tracker = tracking.RunTracker(uri, "dinowm", tracking.default_artifact_location(uri, out))
    run = tracker.start("wall-ok", {"env": "wall"}, {})
    tracking.WorkerLogger(uri, run).log_artifact(ckpt, tracking.CHECKPOINT_ARTIFACT)
    tracker.end("FINISHED")
    version = tracker.register(MODEL)
    tracker.client.set_registered_model_alias(MODEL, "best", version)
    return dict(out=out, uri=uri, ckpt=ckpt, run=run)


@pytest.mark.parametrize("ref", ["runs:/{run}/checkpoint", f"models:/{MODEL}@best"])
def test_load_resolves_mlflow_references_into_the_cache(store, ref):
    ref = ref.format(run=store["run"])
    cache = store["out"] / "cache"
    service = PlanningService.load(ref, tracking_uri=store["uri"], cache_dir=cache)
    info = service.info()
    assert info.source == ref
    assert info.config_digest == hashlib.sha256((store["ckpt"] / "config.json").read_bytes()).hexdigest()
    assert any(cache.glob("*/config.json"))


def test_load_names_what_mlflow_does_not_have(store):
    with pytest.raises(LookupError):
        PlanningService.load(f"models:/{MODEL}/99", tracking_uri=store["uri"], cache_dir=store["out"] / "c")

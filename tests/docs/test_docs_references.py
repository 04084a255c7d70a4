"""The generated references (docs/config.md, docs/http_api.md) match the code they are generated from.

A page is regenerated in memory and compared with the file; a difference fails with the command that rewrites
it. The other tests prove that the comparison notices a changed description, an added key and an added field of
an HTTP body, and that every config key has a description to show.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import sys
from pathlib import Path

import pytest
from pydantic import Field

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("dinowm_gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def spec() -> dict:
    return gen.openapi_spec()


def _diff(rel: str, fresh: str) -> str:
    current = (ROOT / rel).read_text().splitlines() if (ROOT / rel).is_file() else []
    lines = list(difflib.unified_diff(current, fresh.splitlines(), f"{rel} (committed)", f"{rel} (from code)",
                                      lineterm="", n=1))  # fmt: skip
    shown = "\n".join(lines[:40]) + ("\n..." if len(lines) > 40 else "")
    return f"{rel} is out of date: regenerate it with {gen.REGENERATE}\n{shown}"


def test_config_reference_is_up_to_date():
    fresh = gen.render_config()
    assert (ROOT / "docs/config.md").is_file() and (ROOT / "docs/config.md").read_text() == fresh, _diff(
        "docs/config.md", fresh
    )


def test_http_api_reference_is_up_to_date(spec):
    fresh = gen.render_http_api(spec)
    assert (ROOT / "docs/http_api.md").is_file() and (ROOT / "docs/http_api.md").read_text() == fresh, _diff(
        "docs/http_api.md", fresh
    )


def test_rendering_is_deterministic(spec):
    assert gen.render_config() == gen.render_config()
    assert gen.render_http_api(spec) == gen.render_http_api(copy.deepcopy(spec))


# ---- the check notices changes ----------------------------------------------------------------------------


def test_a_changed_description_makes_the_config_reference_stale(monkeypatch):
    from dinowm_core.config import CEMConfig

    monkeypatch.setattr(CEMConfig.model_fields["num_samples"], "description", "a new description")
    fresh = gen.render_config()
    assert "a new description" in fresh
    assert gen.stale(["config"]) == ["docs/config.md"]
    assert "docs/config.md is out of date: regenerate it with make docs" in _diff("docs/config.md", fresh)


def test_an_added_key_makes_the_config_reference_stale(monkeypatch):
    import dinowm_core.config as config_pkg
    from dinowm_core.config import Config

    class WithNewKey(Config):
        brand_new_key: int = Field(3, gt=0, description="a key the reference does not list yet")

    monkeypatch.setattr(config_pkg, "Config", WithNewKey)
    fresh = gen.render_config()
    assert "| `brand_new_key` | int (> 0) | `3` | a key the reference does not list yet |" in fresh
    assert gen.stale(["config"]) == ["docs/config.md"]


def test_an_added_body_field_makes_the_http_reference_stale(monkeypatch, spec):
    changed = copy.deepcopy(spec)
    changed["components"]["schemas"]["PlanRequest"]["properties"]["deadline_s"] = {
        "type": "number", "exclusiveMinimum": 0, "description": "a field the reference does not list yet",
    }  # fmt: skip
    monkeypatch.setattr(gen, "openapi_spec", lambda: changed)
    fresh = gen.render_http_api()
    assert "| `deadline_s` | number | no | > 0 |  | a field the reference does not list yet |" in fresh
    assert gen.stale(["http"]) == ["docs/http_api.md"]


def test_the_check_command_names_the_stale_page(monkeypatch, capsys):
    from dinowm_core.config import CEMConfig

    monkeypatch.setattr(CEMConfig.model_fields["topk"], "description", "changed")
    assert gen.main(["config", "--check"]) == 1
    assert "docs/config.md is out of date: regenerate it with make docs" in capsys.readouterr().err


# ---- what the reference shows -----------------------------------------------------------------------------


def test_every_config_key_is_listed_with_a_description():
    """A key without ``description=`` shows an empty cell in docs/config.md: say what it means where it is
    defined (dinowm_core/config/*.py, ray_jobs/job_config.py)."""
    from dinowm_core.config import Config
    from ray_jobs.job_config import JobConfig

    text = (ROOT / "docs/config.md").read_text()
    keys = [*gen.schema_keys(Config), *gen.schema_keys(JobConfig)]
    assert len(keys) > 100
    missing = [k.key for k in keys if not k.description]
    assert not missing, f"config keys without a description (add description=...): {', '.join(missing)}"
    assert all(f"| `{k.key}` |" in text for k in keys)


def test_every_route_and_schema_is_listed(spec):
    text = gen.render_http_api(spec)
    for path, item in spec["paths"].items():
        for method in item:
            assert f"### `{method.upper()} {path}`" in text
    for name in spec["components"]["schemas"]:
        assert f"### {name}\n" in text


def test_a_default_that_conf_overrides_shows_both(monkeypatch):
    """The default column is what a user gets: where conf/*.yaml sets another value than the schema, both."""
    from dinowm_core.config import TrainingConfig

    # The compiled validator keeps the old default: as if conf/config.yaml set training.epochs to 100.
    monkeypatch.setattr(TrainingConfig.model_fields["epochs"], "default", 7)
    assert "| `training.epochs` | int (> 0) | `100` (from conf/; schema: `7`) |" in gen.render_config()

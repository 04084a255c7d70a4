import json

from typer.testing import CliRunner

from ray_jobs.cli import app
from tests.conftest import TINY

runner = CliRunner()


def test_config_command_prints_resolved_json():
    res = runner.invoke(app, ["config", "env=pusht", "predictor.depth=4"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.stdout)
    assert cfg["env"]["name"] == "pusht" and cfg["predictor"]["depth"] == 4


def test_model_summary_for_a_tiny_config():
    res = runner.invoke(app, ["model", *TINY, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["shapes"]["z"] == [32, 4, 16, 84]
    assert summary["trainable_params"]["encoder"] == 0


def test_reference_default_summary():
    res = runner.invoke(app, ["model", "encoder.pretrained=false", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["params"]["predictor"] == 20_122_600
    assert summary["params"]["decoder"] == 10_140_163


def test_bad_override_is_a_clean_error():
    res = runner.invoke(app, ["model", "predictor.depht=3"])
    assert res.exit_code == 2
    assert "predictor.depht: unknown key" in res.output
    assert "Traceback" not in res.output


def test_missing_pretrained_weights_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    res = runner.invoke(app, ["model", "img_size=64"])
    assert res.exit_code == 2
    assert "no pretrained weights for dinov2_vits14" in res.output

"""Training from the feature cache: same loss as from images, the encoder is skipped, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset
from train_helpers import RecordingHooks

from dinowm_core import build_world_model, load_config
from dinowm_core.data.features import encode_dataset
from dinowm_core.data.store import DatasetError
from dinowm_core.data.windows import build_datasets
from dinowm_core.models.encoders import VisualEncoder
from dinowm_core.training.data import CachedWindows, open_feature_cache
from dinowm_core.training.loop import fit


@pytest.fixture
def cached(wall_dataset, tiny_overrides):
    """The TINY encoder's cache in the session dataset (encoded once; later calls find it up to date)."""
    cfg = load_config([*tiny_overrides, f"data.path={wall_dataset}"])
    wm = build_world_model(cfg)
    encode_dataset(wall_dataset, cfg.encoder.name, img_size=cfg.img_size, encoder=wm.encoder)
    return cfg


def test_cached_tokens_give_the_image_loss(cached):
    cfg = cached
    wm = build_world_model(cfg).eval()
    train_w, *_ = build_datasets(cfg)
    windows = CachedWindows(train_w, open_feature_cache(train_w, wm, cfg))
    obs, act, _ = next(iter(DataLoader(Subset(windows, range(0, 200, 25)), batch_size=8)))
    assert obs["visual_tokens"].dtype == torch.float16 and obs["visual_tokens"].shape == (8, 4, 16, 64)
    with torch.no_grad():
        z_img = wm.encode_obs({"visual": obs["visual"], "proprio": obs["proprio"]})["visual"]
        torch.testing.assert_close(obs["visual_tokens"].float(), z_img, rtol=2e-3, atol=2e-3)
        loss_img, m_img = wm.loss({"visual": obs["visual"], "proprio": obs["proprio"]}, act)
        loss_tok, m_tok = wm.loss(obs, act)
    torch.testing.assert_close(loss_tok, loss_img, rtol=2e-3, atol=1e-4)
    torch.testing.assert_close(m_tok["z_loss"], m_img["z_loss"], rtol=2e-3, atol=1e-4)


def test_fit_from_cache_never_runs_the_encoder(cached, train_overrides, tmp_path, monkeypatch):
    calls = []
    original = VisualEncoder.forward
    monkeypatch.setattr(VisualEncoder, "forward", lambda self, x: calls.append(1) or original(self, x))
    cfg = load_config([*train_overrides, "data.feature_cache=true", "training.max_steps=3",
                       "training.num_val_rollouts=0", "training.val_max_batches=1"])  # fmt: skip
    result = fit(cfg, RecordingHooks(tmp_path / "run"))
    assert result.steps == 3 and result.metrics["val/loss"] > 0
    assert calls == []


def test_missing_cache_tells_how_to_make_it(cached, train_overrides, tmp_path):
    # Another encoder init -> other weights -> another cache key, which was never encoded.
    cfg = load_config([*train_overrides, "data.feature_cache=true", "encoder.init_seed=7"])
    with pytest.raises(DatasetError, match="dinowm data encode"):
        fit(cfg, RecordingHooks(tmp_path / "run"))

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinowm_core import CheckpointError, build_world_model, load_config, load_world_model, save_world_model
from dinowm_core.models.encoders import build_encoder
from dinowm_core.training.checkpoint import load_train_state
from tests.conftest import TINY


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.fixture
def trained_tiny(tmp_path):
    cfg = load_config(TINY)
    wm = build_world_model(cfg)
    # move every trainable weight away from its init so that loading must really restore it
    with torch.no_grad():
        for p in wm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    wm.normalization = {"action_mean": [0.0, 0.1], "action_std": [1.0, 2.0]}
    return wm


def test_save_load_is_exact(tmp_path, trained_tiny):
    wm = trained_tiny
    state = {"step": torch.tensor(7), "epoch": 2, "rng": torch.get_rng_state(), "lrs": [1e-3, 2e-3]}
    path = save_world_model(wm, tmp_path / "ckpt", train_state=state)
    assert sorted(os.listdir(path)) == [
        "config.json",
        "encoder.safetensors",
        "meta.json",
        "model.safetensors",
        "normalization.json",
        "train_state.pt",
    ]
    assert not any(k.startswith("encoder.") for k in load_file(path / "model.safetensors"))
    wm2 = load_world_model(path)
    _assert_same_state(wm, wm2)
    assert wm2.cfg == wm.cfg
    assert wm2.normalization == wm.normalization
    loaded = load_train_state(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["rng"], state["rng"])
    # identical outputs, too
    wm.eval(), wm2.eval()
    obs = {"visual": torch.rand(1, 2, 3, 64, 64) * 2 - 1, "proprio": torch.randn(1, 2, 2)}
    act = torch.randn(1, 3, 10)
    with torch.no_grad():
        torch.testing.assert_close(wm.rollout(obs, act)[1], wm2.rollout(obs, act)[1], rtol=0, atol=0)


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(tmp_path, trained_tiny):
    path = tmp_path / "ckpt"
    save_world_model(trained_tiny, path)
    with torch.no_grad():
        trained_tiny.predictor.norm.bias.add_(1.0)
    save_world_model(trained_tiny, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    _assert_same_state(trained_tiny, load_world_model(path))


def test_failed_save_leaves_previous_checkpoint(tmp_path, trained_tiny, monkeypatch):
    path = tmp_path / "ckpt"
    save_world_model(trained_tiny, path)
    before = (path / "model.safetensors").read_bytes()
    import dinowm_core.training.checkpoint as ckpt

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        save_world_model(trained_tiny, path)
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_pretrained_encoder_is_not_stored(tmp_path, monkeypatch):
    # An official-layout DINOv2 ViT-S/14 file in the torch hub cache, made by the test (no download).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_ckpt = tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    hub_ckpt.parent.mkdir(parents=True)
    enc = build_encoder("dinov2_vits14", pretrained=False, init_seed=3)
    torch.save(enc.backbone.state_dict(), hub_ckpt)
    cfg = load_config(["env=wall", "img_size=64", "predictor=vit_small", "decoder=vqvae_small"])
    wm = build_world_model(cfg)
    path = save_world_model(wm, tmp_path / "ckpt")
    assert not (path / "encoder.safetensors").exists()
    assert not any(k.startswith("encoder.") for k in load_file(path / "model.safetensors"))
    wm2 = load_world_model(path)
    _assert_same_state(wm, wm2)
    # Different weights in the cache than at training time: refuse, naming the file.
    torch.save(build_encoder("dinov2_vits14", pretrained=False, init_seed=4).backbone.state_dict(), hub_ckpt)
    with pytest.raises(CheckpointError, match="meta.json: encoder weights differ"):
        load_world_model(path)


def test_truncated_weights_name_the_file(tmp_path, trained_tiny):
    path = save_world_model(trained_tiny, tmp_path / "ckpt")
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable or truncated"):
        load_world_model(path)


def test_mismatched_config_names_the_key(tmp_path, trained_tiny):
    path = save_world_model(trained_tiny, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["predictor"]["mlp_dim"] = 128
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: key 'predictor\.layers\.0\.1\.net\.1\.bias' has shape"
    ):
        load_world_model(path)
    cfg["predictor"]["mlp_dim"] = 256
    cfg["predictor"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing key 'predictor\.layers\.2"):
        load_world_model(path)
    cfg["predictor"]["depth"] = 2
    cfg["predictor"]["nonsense"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"(?s)config\.json: .*predictor\.nonsense: unknown key"):
        load_world_model(path)


def test_missing_files(tmp_path, trained_tiny):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_world_model(tmp_path / "nope")
    path = save_world_model(trained_tiny, tmp_path / "ckpt")
    (path / "encoder.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"encoder\.safetensors: missing"):
        load_world_model(path)


def test_train_state_refuses_pickled_objects(tmp_path, trained_tiny):
    path = save_world_model(trained_tiny, tmp_path / "ckpt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, Path(path) / "train_state.pt")
    with pytest.raises(CheckpointError, match="train_state.pt: unreadable"):
        load_train_state(path)

"""Encoder weights: DINOv2 key layouts (hub, timm, transformers), load errors, and offline weight discovery.

Offline and CPU-only: every weight here is random and made by the test, the torch hub and Hugging Face caches
point at tmp dirs, and any network access fails the test. Module behaviour and parity are in test_encoders.py.
"""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dinowm_core.models.dinov2 import DinoVisionTransformer, dinov2_vit
from dinowm_core.models.encoders import (
    OFFICIAL_URL,
    build_encoder,
    encoder_fingerprint,
    load_dinov2_state_dict,
    normalize_dinov2_state_dict,
    weight_search_patterns,
)
from tests.core.encoder_helpers import (
    on_meta,
    random_state_dict,
    tiny_vit,
    to_timm_layout,
    to_transformers_layout,
    vits14_random_state_dict,
)


@pytest.fixture(scope="module")
def vits_sd() -> dict[str, torch.Tensor]:
    return vits14_random_state_dict(seed=0)


def loaded(model: DinoVisionTransformer, sd: dict[str, torch.Tensor]) -> DinoVisionTransformer:
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Key layouts and load errors
# ---------------------------------------------------------------------------------------------------------------


def test_hub_timm_and_transformers_layouts_give_identical_models():
    sd = random_state_dict(tiny_vit(), seed=7)
    layouts = {
        "hub": sd,
        "timm": to_timm_layout(sd),
        "transformers": to_transformers_layout(sd),
        "prefixed transformers": {f"dinov2.{k}": v for k, v in to_transformers_layout(sd).items()},
        "ddp-wrapped hub": {f"module.{k}": v for k, v in sd.items()},
    }
    x = torch.rand(1, 3, 70, 84, generator=torch.Generator().manual_seed(8)) * 2 - 1
    outputs = {}
    for layout, layout_sd in layouts.items():
        assert set(normalize_dinov2_state_dict(layout_sd)) == set(sd), layout
        model = tiny_vit()
        load_dinov2_state_dict(model, layout_sd, source=layout)
        for key, value in model.state_dict().items():
            # timm files carry no mask_token (only used for masked inputs): the normalizer fills zeros.
            expected = torch.zeros(1, 64) if (layout, key) == ("timm", "mask_token") else sd[key]
            assert torch.equal(value, expected), (layout, key)
        with torch.no_grad():
            outputs[layout] = model.eval().forward_features(x)["x_norm_patchtokens"]
    assert outputs["hub"].shape == (1, 5 * 6, 64)
    for layout, out in outputs.items():
        assert torch.equal(out, outputs["hub"]), layout


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda sd: sd.pop("blocks.1.ls2.gamma"), "blocks.1.ls2.gamma"),
        (lambda sd: sd.pop("norm.bias"), "norm.bias"),
        (
            lambda sd: sd.__setitem__("blocks.0.attn.qkv.weight", torch.zeros(10, 64)),
            "blocks.0.attn.qkv.weight",
        ),
        (lambda sd: sd.__setitem__("head.weight", torch.zeros(10, 64)), "head.weight"),
        (
            lambda sd: sd.__setitem__("blocks.2.norm1.weight", torch.zeros(64)),
            "blocks.2",
        ),  # one block too many
    ],
)
def test_bad_state_dict_errors_name_the_key_and_source(edit, key):
    sd = random_state_dict(tiny_vit(), seed=9)
    edit(sd)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as info:
        load_dinov2_state_dict(tiny_vit(), sd, source="some/file.pth")
    assert "some/file.pth" in str(info.value)


def test_transformers_layout_with_missing_value_projection_names_it():
    sd = to_transformers_layout(random_state_dict(tiny_vit(), seed=10))
    del sd["encoder.layer.1.attention.attention.value.bias"]
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.value\.bias"):
        normalize_dinov2_state_dict(sd, source="hf.safetensors")


def test_wrong_architecture_file_names_path_and_key(vits_sd, tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save({k: v for k, v in vits_sd.items() if k != "blocks.3.mlp.fc2.bias"}, path)
    with pytest.raises(ValueError, match=r"blocks\.3\.mlp\.fc2\.bias") as info:
        build_encoder("dinov2_vits14", path)
    assert str(path) in str(info.value)
    tiny_file = tmp_path / "tiny.pth"  # a valid 12-block DINOv2 file, but not ViT-S: shapes differ
    torch.save(random_state_dict(tiny_vit(depth=12), seed=11), tiny_file)
    with pytest.raises(ValueError, match=r"shape"):
        build_encoder("dinov2_vits14", tiny_file)


# ---------------------------------------------------------------------------------------------------------------
# Weight discovery
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def caches(tmp_path, monkeypatch) -> dict[str, Path]:
    """Point the torch hub and Hugging Face caches at tmp dirs and make any network access fail loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case anything in this process called set_dir

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return {"hub": tmp_path / "torch" / "hub" / "checkpoints", "hf": tmp_path / "hf" / "hub"}


def reference_fingerprint(sd: dict[str, torch.Tensor]) -> str:
    return encoder_fingerprint(loaded(on_meta(lambda: dinov2_vit("vits14")).to_empty(device="cpu"), sd))


def place(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    ("root", "relative", "layout"),
    [
        ("hub", "dinov2_vits14_pretrain.pth", lambda sd: sd),
        (
            "hf",
            "models--timm--vit_small_patch14_dinov2.lvd142m/snapshots/0a1b/model.safetensors",
            to_timm_layout,
        ),
        (
            "hf",
            "models--timm--vit_small_patch14_dinov2.lvd142m/snapshots/0a1b/pytorch_model.bin",
            to_timm_layout,
        ),
        ("hf", "models--facebook--dinov2-small/snapshots/9f8e/model.safetensors", to_transformers_layout),
    ],
)
def test_weights_found_in_cache_layouts(caches, vits_sd, root, relative, layout, caplog):
    path = place(caches[root] / relative, layout(vits_sd))
    with caplog.at_level(logging.INFO, logger="dinowm_core.models.encoders"):
        encoder = build_encoder("dinov2_vits14")
    expected = dict(vits_sd)
    if layout is to_timm_layout:  # timm files carry no mask_token: it is filled with zeros
        expected["mask_token"] = torch.zeros_like(vits_sd["mask_token"])
    assert encoder_fingerprint(encoder.backbone) == reference_fingerprint(expected)
    assert str(path) in caplog.text


def test_hf_hub_cache_variable_wins_over_hf_home(caches, vits_sd, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    place(caches["hf"] / "models--facebook--dinov2-small/snapshots/1/model.safetensors", vits_sd)
    with pytest.raises(FileNotFoundError):
        build_encoder("dinov2_vits14")
    place(tmp_path / "elsewhere/models--facebook--dinov2-small/snapshots/1/model.safetensors", vits_sd)
    assert encoder_fingerprint(build_encoder("dinov2_vits14").backbone) == reference_fingerprint(vits_sd)


def test_explicit_path_then_hub_cache_take_priority(caches, vits_sd, tmp_path):
    other = random_state_dict(on_meta(lambda: dinov2_vit("vits14")), seed=12)
    place(
        caches["hf"] / "models--facebook--dinov2-small/snapshots/1/model.safetensors",
        to_transformers_layout(other),
    )
    place(caches["hub"] / "dinov2_vits14_pretrain.pth", vits_sd)
    assert encoder_fingerprint(build_encoder("dinov2_vits14").backbone) == reference_fingerprint(vits_sd)
    explicit = place(tmp_path / "mine.safetensors", other)
    assert encoder_fingerprint(build_encoder("dinov2_vits14", explicit).backbone) == reference_fingerprint(
        other
    )
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_encoder("dinov2_vits14", tmp_path / "missing.pth")  # an explicit path never falls back


def test_nothing_found_lists_every_place_and_the_fixes(caches):
    with pytest.raises(FileNotFoundError) as info:
        build_encoder("dinov2_vitb14")
    message = str(info.value)
    patterns = weight_search_patterns("vitb14")
    assert len(patterns) == 5
    for pattern in patterns:
        assert pattern in message
    assert str(caches["hub"] / "dinov2_vitb14_pretrain.pth") in patterns
    assert any("models--timm--vit_base_patch14_dinov2.lvd142m" in p for p in patterns)
    assert any("models--facebook--dinov2-base" in p for p in patterns)
    assert "encoder.weights=" in message and "encoder.allow_download=true" in message


def test_download_only_when_allowed_and_from_the_official_url(caches, vits_sd, monkeypatch):
    requested = []

    def fake_download(url, **kwargs):
        requested.append(url)
        return vits_sd

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(FileNotFoundError):
        build_encoder("dinov2_vits14")
    assert requested == []
    encoder = build_encoder("dinov2_vits14", allow_download=True)
    assert requested == ["https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"]
    assert OFFICIAL_URL.format(arch="vitl14").endswith("dinov2_vitl14/dinov2_vitl14_pretrain.pth")
    assert encoder_fingerprint(encoder.backbone) == reference_fingerprint(vits_sd)

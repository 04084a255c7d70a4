"""Visual encoders: DINOv2 key layout, exact parity with independent implementations, weight discovery, freezing.

Offline and CPU-only: every weight here is random and made by the test. timm (a dev dependency) and transformers
(optional) serve as independent DINOv2 implementations; both are skipped when not importable.
"""

from __future__ import annotations

import logging
import urllib.request
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from dinowm_core.models.dinov2 import DinoVisionTransformer, dinov2_vit
from dinowm_core.models.encoders import (
    OFFICIAL_URL,
    VisualEncoder,
    build_encoder,
    encoder_fingerprint,
    load_dinov2_state_dict,
    normalize_dinov2_state_dict,
    weight_search_patterns,
)

ATOL = 1e-4


def random_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for `model`'s keys; scales and norms are far from 1 so a dropped or swapped one shows."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in model.state_dict().items():
        if key.endswith("gamma") or (".norm" in f".{key}" and key.endswith("weight")):
            out[key] = 1 + 0.3 * torch.randn(ref.shape, generator=g)
        else:
            out[key] = 0.03 * torch.randn(ref.shape, generator=g)
    return out


def on_meta(factory):
    with torch.device("meta"):
        return factory()


def loaded(model: DinoVisionTransformer, sd: dict[str, torch.Tensor]) -> DinoVisionTransformer:
    model.load_state_dict(sd, strict=True)
    return model.eval()


def tiny_vit(**kw) -> DinoVisionTransformer:
    return DinoVisionTransformer(**({"embed_dim": 64, "depth": 2, "num_heads": 2} | kw))


def to_transformers_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the normalizer, written independently from the Hugging Face Dinov2Model names."""
    top = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token"}
    top |= {"pos_embed": "embeddings.position_embeddings"}
    out = {}
    for key, value in sd.items():
        suffix = key.rsplit(".", 1)[-1]
        if key in top:
            out[top[key]] = value
        elif key.startswith("patch_embed.proj."):
            out[f"embeddings.patch_embeddings.projection.{suffix}"] = value
        elif key.startswith("norm."):
            out[f"layernorm.{suffix}"] = value
        else:
            _, index, rest = key.split(".", 2)
            prefix = f"encoder.layer.{index}."
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}attention.attention.{name}.{suffix}"] = part.clone()
            elif rest.startswith("attn.proj."):
                out[f"{prefix}attention.output.dense.{suffix}"] = value
            elif rest in ("ls1.gamma", "ls2.gamma"):
                out[f"{prefix}layer_scale{rest[2]}.lambda1"] = value
            else:  # norm1, norm2, mlp.fc1, mlp.fc2 keep their names
                out[prefix + rest] = value
    return out


def to_timm_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k != "mask_token"}


def official_pos_embed(pos_embed: torch.Tensor, h0: int, w0: int) -> torch.Tensor:
    """The official DINOv2 resampling, spelled out as in facebookresearch/dinov2 (offset 0.1, no antialias)."""
    n, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    m = int(n**0.5)
    patch = F.interpolate(
        pos_embed[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2).float(),
        mode="bicubic",
        antialias=False,
        scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m),
    )
    assert patch.shape[-2:] == (h0, w0)
    return torch.cat((pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


@pytest.fixture(scope="module")
def vits_sd() -> dict[str, torch.Tensor]:
    return random_state_dict(on_meta(lambda: dinov2_vit("vits14")), seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 196, 196, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ---------------------------------------------------------------------------------------------------------------
# Architecture and parity
# ---------------------------------------------------------------------------------------------------------------


def test_vits14_official_layout_loads_strict_and_gives_reference_shapes(vits_sd, images, tmp_path):
    model = on_meta(lambda: dinov2_vit("vits14"))
    assert len(model.state_dict()) == 175
    assert model.pos_embed.shape == (1, 1 + 37 * 37, 384) and model.mask_token.shape == (1, 384)
    assert {"blocks.11.ls2.gamma", "blocks.0.attn.qkv.bias", "patch_embed.proj.weight"} <= set(vits_sd)
    torch.save(vits_sd, tmp_path / "vits14.pth")

    patch = build_encoder("dinov2_vits14", tmp_path / "vits14.pth")
    cls = build_encoder("dinov2_vits14", tmp_path / "vits14.pth", feature="cls")
    assert (patch.emb_dim, patch.patch_size, patch.is_dino, patch.trainable) == (384, 14, True, False)
    tokens, cls_tokens = patch(images), cls(images)
    assert tokens.shape == (2, 196, 384) and cls_tokens.shape == (2, 1, 384)
    assert patch.num_tokens(196, 196) == 196 and cls.num_tokens(196, 196) == 1
    assert not torch.allclose(tokens[0], tokens[1]) and not torch.allclose(cls_tokens[0], cls_tokens[1])


def test_pos_embed_resampling_is_the_official_bicubic():
    model = tiny_vit()
    model.pos_embed.data.normal_(generator=torch.Generator().manual_seed(2))
    for h0, w0 in [(14, 14), (16, 12), (5, 37)]:
        expected = official_pos_embed(model.pos_embed.detach(), h0, w0)
        torch.testing.assert_close(model.interpolate_pos_embed(h0, w0).detach(), expected, rtol=0, atol=0)
    # The native grid is used as is, and the class embedding always stays in front unchanged.
    assert model.interpolate_pos_embed(37, 37) is model.pos_embed
    # A plain size= resize (what timm and recent transformers do) is measurably different: the offset matters.
    naive = F.interpolate(
        model.pos_embed[:, 1:].detach().reshape(1, 37, 37, 64).permute(0, 3, 1, 2),
        size=(14, 14),
        mode="bicubic",
    )
    assert (naive.flatten(2).transpose(1, 2) - model.interpolate_pos_embed(14, 14)[:, 1:]).abs().max() > 1e-3


def test_vits14_matches_timm_blocks_with_official_pos_embed(vits_sd, images):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):  # skip timm's random init: every weight is replaced below
        reference = timm.create_model(
            "vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0
        )
    reference = reference.to_empty(device="cpu")
    reference.load_state_dict(to_timm_layout(vits_sd), strict=True)
    reference.eval()
    ours = on_meta(lambda: dinov2_vit("vits14")).to_empty(device="cpu")
    load_dinov2_state_dict(ours, reference.state_dict(), source="timm")
    ours.eval()

    with torch.no_grad():
        # Everything but the position-embedding resampling comes from timm's modules.
        tokens = reference.patch_embed.proj(images).flatten(2).transpose(1, 2)
        tokens = torch.cat((reference.cls_token.expand(2, -1, -1), tokens), dim=1)
        tokens = reference.norm(reference.blocks(tokens + official_pos_embed(reference.pos_embed, 14, 14)))
        features = ours.forward_features(images)
    assert (features["x_norm_patchtokens"] - tokens[:, 1:]).abs().max() < ATOL
    assert (features["x_norm_clstoken"] - tokens[:, 0]).abs().max() < ATOL
    assert tokens[:, 1:].std() > 0.5  # a meaningful comparison, not two near-zero tensors


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_tiny_matches_timm_end_to_end_at_native_grid(ffn):
    """At the native grid there is no resampling, so timm's whole forward must match ours (SwiGLU = ViT-g FFN)."""
    timm_layers = pytest.importorskip("timm.layers")
    from timm.models.vision_transformer import VisionTransformer

    swiglu = {"mlp_layer": timm_layers.SwiGLUPacked, "act_layer": nn.SiLU, "mlp_ratio": 256 / 48 + 1e-4}
    reference = VisionTransformer(
        img_size=98, patch_size=14, embed_dim=48, depth=2, num_heads=2, num_classes=0, init_values=1.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **(swiglu if ffn == "swiglu" else {}),
    )  # fmt: skip
    reference.load_state_dict(random_state_dict(reference, seed=3), strict=True)
    ours = tiny_vit(embed_dim=48, img_size=98, ffn=ffn)
    load_dinov2_state_dict(ours, reference.state_dict(), source="timm")
    if ffn == "swiglu":
        assert ours.blocks[0].mlp.w12.weight.shape == (256, 48)
        assert ours.blocks[0].mlp.w3.weight.shape == (48, 128)
    x = torch.rand(2, 3, 98, 98, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = reference.eval().forward_features(x)
        got = ours.eval().forward_features(x)
    assert (got["x_norm_patchtokens"] - expected[:, 1:]).abs().max() < ATOL
    assert (got["x_norm_clstoken"] - expected[:, 0]).abs().max() < ATOL


def test_tiny_matches_transformers_dinov2_at_native_grid():
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=98, patch_size=14,
        layerscale_value=1.0, layer_norm_eps=1e-6, hidden_act="gelu", mlp_ratio=4,
    )  # fmt: skip
    ours = tiny_vit(img_size=98)
    sd = random_state_dict(ours, seed=5)
    reference = transformers.Dinov2Model(config).eval()
    reference.load_state_dict(to_transformers_layout(sd), strict=True)
    load_dinov2_state_dict(ours, reference.state_dict(), source="transformers")
    x = torch.rand(2, 3, 98, 98, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state
        got = ours.eval().forward_features(x)
    assert (got["x_norm_patchtokens"] - expected[:, 1:]).abs().max() < ATOL
    assert (got["x_norm_clstoken"] - expected[:, 0]).abs().max() < ATOL


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


# ---------------------------------------------------------------------------------------------------------------
# Freezing, conv encoder, seeding
# ---------------------------------------------------------------------------------------------------------------


def test_frozen_dino_stays_frozen_and_in_eval():
    encoder = build_encoder("dinov2_tiny", width=32, depth=1, heads=2)
    assert not encoder.trainable and not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())
    x = torch.rand(2, 3, 56, 42, requires_grad=True)
    out = encoder(x)
    assert out.shape == (2, 4 * 3, 32) and not out.requires_grad


def test_conv_encoder_is_trainable_patch_encoder():
    encoder = build_encoder("conv", width=24)
    assert (encoder.trainable, encoder.is_dino, encoder.patch_size, encoder.emb_dim) == (True, False, 16, 24)
    encoder.eval().train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    out = encoder(torch.rand(3, 3, 224, 224) * 2 - 1)
    assert out.shape == (3, 196, 24)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    frozen = build_encoder("conv", train=False)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.train().training


def test_random_inits_depend_only_on_init_seed():
    before = torch.random.get_rng_state()
    for name in ("dinov2_tiny", "conv"):
        a, b, c = (build_encoder(name, init_seed=s) for s in (0, 0, 1))
        assert encoder_fingerprint(a) == encoder_fingerprint(b) != encoder_fingerprint(c)
        for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), key
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG was never touched


def test_fingerprint_tracks_every_weight():
    encoder = build_encoder("dinov2_tiny")
    before = encoder_fingerprint(encoder)
    assert len(before) == 16 and before == encoder_fingerprint(build_encoder("dinov2_tiny"))
    with torch.no_grad():
        encoder.backbone.blocks[1].ls2.gamma[3] += 1e-3
    assert encoder_fingerprint(encoder) != before


def test_invalid_requests_fail_clearly():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("resnet18")
    with pytest.raises(ValueError, match="CLS"):
        build_encoder("conv", feature="cls")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_encoder("dinov2_tiny")(torch.zeros(1, 3, 50, 56))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_encoder("dinov2_tiny")(torch.zeros(3, 56, 56))
    assert isinstance(build_encoder("dinov2_tiny", feature="cls"), VisualEncoder)


def test_vitg14_uses_swiglu_with_official_shapes():
    model = on_meta(lambda: dinov2_vit("vitg14"))
    sd = model.state_dict()
    assert len(sd) == 5 + 40 * 14 + 2
    assert sd["blocks.39.mlp.w12.weight"].shape == (8192, 1536) and sd["blocks.0.mlp.w3.weight"].shape == (
        1536,
        4096,
    )
    assert model.pos_embed.shape == (1, 1370, 1536)

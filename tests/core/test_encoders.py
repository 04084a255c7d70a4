"""Visual encoders as modules: DINOv2 architecture, exact parity with independent implementations, freezing.

Offline and CPU-only: every weight here is random and made by the test. timm (a dev dependency) and transformers
(optional) serve as independent DINOv2 implementations; both are skipped when not importable. Key layouts and
weight discovery are in test_encoder_weights.py.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinowm_core.models.dinov2 import dinov2_vit
from dinowm_core.models.encoders import (
    VisualEncoder,
    build_encoder,
    encoder_fingerprint,
    load_dinov2_state_dict,
)
from tests.core.encoder_helpers import (
    on_meta,
    random_state_dict,
    tiny_vit,
    to_timm_layout,
    to_transformers_layout,
    vits14_random_state_dict,
)

ATOL = 1e-4


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
    return vits14_random_state_dict(seed=0)


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

"""The pixels encoder (encoder=pixels): fixed blurred pixel patches, optionally randomly projected."""

import numpy as np
import pytest
import torch

from dinowm_core import build_world_model, load_config, load_world_model, save_world_model
from dinowm_core.envs.wall import WallEnv
from dinowm_core.models.encoders import VisualEncoder, build_encoder, encoder_fingerprint

WALL_64 = ["env=wall", "encoder=pixels", "predictor=vit_small", "decoder=vqvae_small", "img_size=64",
           "frameskip=5", "num_hist=1"]  # fmt: skip


def _wall_frames(xs, y=20.0):
    """(len(xs), 3, 64, 64) Wall frames in [-1, 1] with the dot at (x, y) for each x."""
    env = WallEnv(img_size=64)
    frames = []
    for x in xs:
        env._set_state(np.array([x, y]))
        frames.append(torch.from_numpy(env.render()).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(frames)


def test_shapes_and_frozen():
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    for width in (64, 768):
        encoder = build_encoder("pixels", width=width, blur=2.0)
        assert isinstance(encoder, VisualEncoder) and encoder.emb_dim == width and encoder.patch_size == 16
        assert encoder(images).shape == (2, 16, width)
        assert encoder.num_tokens(64, 64) == 16
        assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert build_encoder("pixels", width=64)(torch.rand(1, 3, 32, 48)).shape == (1, 6, 64)


def test_unprojected_unblurred_tokens_are_the_patch_pixels():
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    tokens = build_encoder("pixels", width=768, blur=0.0, gain=1.0)(images)
    patch = images[0, :, 16:32, 32:48].reshape(-1)  # cell (row 1, column 2) -> token 1 * 4 + 2
    torch.testing.assert_close(tokens[0, 6], patch - 1.0)


def test_projection_is_orthonormal_and_depends_only_on_init_seed():
    a = build_encoder("pixels", width=64, blur=2.0, init_seed=3)
    b = build_encoder("pixels", width=64, blur=2.0, init_seed=3)
    c = build_encoder("pixels", width=64, blur=2.0, init_seed=4)
    proj = a.backbone.proj
    torch.testing.assert_close(proj.T @ proj, torch.eye(64), atol=1e-5, rtol=0)
    assert encoder_fingerprint(a) == encoder_fingerprint(b) != encoder_fingerprint(c)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(a(images), b(images))
    torch.manual_seed(0)  # the global RNG plays no part
    assert torch.equal(build_encoder("pixels", width=64, blur=2.0, init_seed=3).backbone.proj, proj)


def test_resolves_one_pixel_shifts_and_blur_makes_distance_grow():
    shifts = [0, 1, 2, 3, 4, 6, 8]
    frames = _wall_frames([12.0 + s for s in shifts])
    for blur in (0.0, 2.0):
        tokens = build_encoder("pixels", width=64, blur=blur)(frames)
        dist = (tokens[1:] - tokens[0]).square().mean(dim=(1, 2))
        assert dist[0] > 0  # one pixel apart: different latents
        if blur:
            assert torch.all(dist[1:] > dist[:-1]), dist  # grows over the whole range of shifts
    raw = build_encoder("pixels", width=768, blur=0.0)(frames)
    raw_dist = (raw[1:] - raw[0]).square().mean(dim=(1, 2))
    # without a blur the distance flattens out: from 6 to 8 px it grows by under 10%, blurred by over 15%
    assert raw_dist[-1] < 1.1 * raw_dist[-2]
    blurred = build_encoder("pixels", width=768, blur=2.0)(frames)
    blur_dist = (blurred[1:] - blurred[0]).square().mean(dim=(1, 2))
    assert blur_dist[-1] > 1.15 * blur_dist[-2]


def test_world_model_save_load_round_trip_is_exact(tmp_path):
    cfg = load_config([*WALL_64, "encoder.init_seed=5"])
    assert cfg.encoder.name == "pixels" and cfg.encoder_img_size == 64 and cfg.num_visual_tokens == 16
    wm = build_world_model(cfg).eval()
    path = save_world_model(wm, tmp_path / "ckpt")
    assert (path / "encoder.safetensors").is_file()  # the fixed buffers travel with the model
    loaded = load_world_model(path).eval()
    assert loaded.cfg == cfg and encoder_fingerprint(loaded.encoder) == encoder_fingerprint(wm.encoder)
    visual = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(wm.encode_visual(visual), loaded.encode_visual(visual))


def test_invalid_settings_fail_clearly():
    with pytest.raises(ValueError, match="width"):
        build_encoder("pixels", width=769)
    with pytest.raises(ValueError, match="CLS"):
        build_encoder("pixels", feature="cls")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_encoder("pixels")(torch.zeros(1, 3, 50, 64))
    with pytest.raises(ValueError, match="train"):
        load_config([*WALL_64, "encoder.train=true"])
    with pytest.raises(ValueError, match="768"):
        load_config([*WALL_64, "encoder.width=1024"])

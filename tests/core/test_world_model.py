import pytest
import torch

from dinowm_core import build_world_model, load_config
from dinowm_core.models.decoder import TransposedConvDecoder, VQVAEDecoder
from tests.conftest import TINY


def _count(m):
    return sum(p.numel() for p in m.parameters())


def _batch(cfg, b=2, t=None):
    t = t or cfg.num_window_frames
    obs = {
        "visual": torch.rand(b, t, 3, cfg.img_size, cfg.img_size) * 2 - 1,
        "proprio": torch.randn(b, t, cfg.env.proprio_dim),
    }
    return obs, torch.randn(b, t, cfg.action_dim)


@pytest.fixture(scope="module")
def reference_wm():
    torch.manual_seed(0)
    return build_world_model(load_config(["encoder.pretrained=false"])).eval()


def test_reference_default_parameter_counts(reference_wm):
    wm = reference_wm
    assert wm.emb_dim == 404
    assert _count(wm.predictor) == 20_122_600
    assert _count(wm.decoder) == 10_140_163
    assert _count(wm.proprio_encoder) == 4 * 10 + 10  # point_maze proprio 4 -> 10
    assert _count(wm.action_encoder) == 10 * 10 + 10  # 2 x frameskip 5 -> 10
    assert _count(TransposedConvDecoder(emb_dim=384, img_size=224)) == 31_309_443


def test_reference_default_shapes(reference_wm):
    wm, cfg = reference_wm, reference_wm.cfg
    obs, act = _batch(cfg, b=1)
    with torch.no_grad():
        z = wm.encode(obs, act)
        assert z.shape == (1, 4, 196, 404)
        assert wm.predict(z[:, :3]).shape == (1, 3, 196, 404)
        dec = wm.decode(z[:, :1])
        assert dec["visual"].shape == (1, 1, 3, 224, 224) and dec["proprio"].shape == (1, 1, 10)
        z_obs, z_all = wm.rollout({k: v[:, :1] for k, v in obs.items()}, torch.randn(1, 3, 10))
    assert z_all.shape == (1, 4, 196, 404)  # N = 3 actions -> N + 1 frames
    assert z_obs["visual"].shape == (1, 4, 196, 384) and z_obs["proprio"].shape == (1, 4, 10)


@pytest.mark.parametrize("concat", ["channel", "token"])
@pytest.mark.parametrize("n_ctx,n_act", [(1, 1), (1, 5), (3, 7), (2, 2)])
def test_tiny_rollout_shapes(concat, n_ctx, n_act):
    cfg = load_config([*TINY, f"concat={concat}"])
    wm = build_world_model(cfg).eval()
    obs, _ = _batch(cfg, b=2, t=n_ctx)
    with torch.no_grad():
        z_obs, z = wm.rollout(obs, torch.randn(2, n_act, cfg.action_dim))
    p = 16 + (2 if concat == "token" else 0)
    assert z.shape[:3] == (2, n_act + 1, p)
    assert z_obs["visual"].shape == (2, n_act + 1, 16, 64)
    # frame 0 is the encoded observation itself
    torch.testing.assert_close(z_obs["visual"][:, :1], wm.encode_visual(obs["visual"][:, :1]))


def test_rollout_overwrites_the_action_slot():
    cfg = load_config(TINY)
    wm = build_world_model(cfg).eval()
    obs, _ = _batch(cfg, b=1, t=1)
    act = torch.randn(1, 4, cfg.action_dim)
    with torch.no_grad():
        _, z = wm.rollout(obs, act)
        _, z_act = wm.separate(z)
        torch.testing.assert_close(z_act[:, :4], wm.encode_act(act))
        # the final frame keeps its predicted action slot
        pred_last = wm.predict(z[:, -4:-1])[:, -1]
    torch.testing.assert_close(z[:, -1], pred_last)


@pytest.mark.parametrize("concat", ["channel", "token"])
def test_replace_actions_changes_only_the_action_slot(concat):
    """A predicted frame keeps its per-patch visual and proprio features (reference replace_actions_from_z)."""
    cfg = load_config([*TINY, f"concat={concat}", "num_proprio_repeat=2", "num_action_repeat=2"])
    wm = build_world_model(cfg).eval()
    obs, act0 = _batch(cfg, b=2, t=3)
    act = torch.randn(2, 3, cfg.action_dim)
    with torch.no_grad():
        z = wm.encode(obs, act0)
        z = z + torch.randn_like(z)  # like a prediction: the tiled proprio copies now differ per patch
        out = wm.replace_actions(z, act)
        _, z_act = wm.separate(out)
    if concat == "channel":
        keep, slot = (..., slice(None, -wm.action_dim)), (..., slice(-wm.action_dim, None))
    else:
        keep, slot = (slice(None), slice(None), slice(None, -1)), (slice(None), slice(None), slice(-1, None))
    assert torch.equal(out[keep], z[keep])  # visual and every patch's proprio features untouched
    assert not torch.equal(out[slot], z[slot])
    torch.testing.assert_close(z_act, wm.encode_act(act))


def test_rollout_requires_an_action_per_context_frame():
    cfg = load_config(TINY)
    wm = build_world_model(cfg).eval()
    obs, _ = _batch(cfg, b=1, t=3)
    with pytest.raises(ValueError, match="at least 3 actions"):
        wm.rollout(obs, torch.randn(1, 2, cfg.action_dim))


@pytest.mark.parametrize("concat", ["channel", "token"])
def test_world_model_predict_is_causal(concat):
    cfg = load_config([*TINY, f"concat={concat}"])
    wm = build_world_model(cfg).eval()
    obs, act = _batch(cfg, b=2, t=3)
    with torch.no_grad():
        z = wm.encode(obs, act)
        base = wm.predict(z)
        for t in range(3):
            obs2 = {k: v.clone() for k, v in obs.items()}
            obs2["visual"][:, t] = torch.rand_like(obs2["visual"][:, t])
            act2 = act.clone()
            act2[:, t] += 1
            out = wm.predict(wm.encode(obs2, act2))
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert (out[:, t:] - base[:, t:]).abs().max() > 1e-4


def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("concat", ["channel", "token"])
def test_loss_terms(concat):
    cfg = load_config([*TINY, f"concat={concat}", "predictor.dropout=0"])
    wm = build_world_model(cfg).train()
    assert not wm.encoder.training, "a frozen encoder stays in eval mode"
    assert all(not p.requires_grad for p in wm.encoder.parameters())
    obs, act = _batch(cfg)
    loss, metrics = wm.loss(obs, act)
    assert set(metrics) >= {
        "z_loss",
        "z_visual_loss",
        "z_proprio_loss",
        "decoder_recon_loss_pred",
        "decoder_vq_loss_pred",
        "decoder_loss_pred",
        "decoder_recon_loss_reconstructed",
        "decoder_vq_loss_reconstructed",
        "decoder_loss_reconstructed",
        "loss",
    }
    # total = z_loss + reconstruction on true latents; the predicted-frame decoder loss is logged only
    torch.testing.assert_close(metrics["loss"], metrics["z_loss"] + metrics["decoder_loss_reconstructed"])
    loss.backward()
    assert all(g is None for g in _grads(wm.encoder))
    assert all(g is not None for g in _grads(wm.predictor))
    assert wm.proprio_encoder.proj.weight.grad.abs().sum() > 0
    assert wm.action_encoder.proj.weight.grad.abs().sum() > 0

    # The decoder term alone sends nothing into the predictor or the embedders.
    wm.zero_grad(set_to_none=True)
    _, _ = wm.loss(obs, act)
    z = wm.encode(obs, act)
    images, _ = wm.decode_visual(wm.separate(z.detach())[0]["visual"])
    torch.nn.functional.mse_loss(images, obs["visual"]).backward()
    assert all(g is None for g in _grads(wm.predictor))
    assert wm.action_encoder.proj.weight.grad is None and wm.proprio_encoder.proj.weight.grad is None
    assert all(g is not None for g in _grads(wm.decoder))


def test_decoder_batch_fraction_trains_the_decoder_on_the_first_samples_only():
    cfg = load_config([*TINY, "predictor.dropout=0", "training.decoder_batch_fraction=0.25"])
    wm = build_world_model(cfg).train()
    obs, act = _batch(cfg, b=8)
    _, metrics = wm.loss(obs, act, decode_pred=False)
    z = wm.encode(obs, act)
    images, diff = wm.decode_visual(wm.separate(z[:2].detach())[0]["visual"])  # ceil(0.25 * 8) = 2 samples
    recon = torch.nn.functional.mse_loss(images, obs["visual"][:2])
    torch.testing.assert_close(metrics["decoder_recon_loss_reconstructed"], recon)
    # the predictor's loss still sees the whole batch, and changing a sample the decoder skips changes
    # only the predictor's terms
    obs2 = {k: v.clone() for k, v in obs.items()}
    obs2["visual"][5] = obs2["visual"][5].flip(-1)
    _, metrics2 = wm.loss(obs2, act, decode_pred=False)
    torch.testing.assert_close(metrics2["decoder_recon_loss_reconstructed"], recon)
    assert not torch.equal(metrics2["z_loss"], metrics["z_loss"])
    # validation (eval mode) measures the decoder on every sample
    wm.eval()
    _, val = wm.loss(obs, act, decode_pred=False)
    images, _ = wm.decode_visual(wm.separate(z.detach())[0]["visual"])
    torch.testing.assert_close(
        val["decoder_recon_loss_reconstructed"], torch.nn.functional.mse_loss(images, obs["visual"])
    )


def test_rollout_loss_is_the_planning_rollout_of_the_true_actions():
    cfg = load_config([*TINY, "predictor.dropout=0", "decoder=none", "training.rollout_steps=3"])
    h, a = cfg.num_hist, 10  # the action slot's width (action_emb_dim 10, no repeat)
    assert cfg.num_window_frames == h + 3
    wm = build_world_model(cfg).train()
    obs, act = _batch(cfg)
    loss, metrics = wm.loss(obs, act)
    z = wm.encode(obs, act)
    mse = torch.nn.functional.mse_loss
    # step 1: the reference's teacher-forced loss over the whole context
    first = mse(wm.predict(z[:, :h])[..., :-a], z[:, 1 : h + 1, :, :-a])
    # steps 2 and 3: what planning imagines from the same context with the true actions
    z_obs0 = {k: v[:, :h] for k, v in wm.separate(z)[0].items()}
    _, z_roll = wm.rollout(None, act[:, : h + 2], z_obs0=z_obs0)
    later = [mse(z_roll[:, h + k, :, :-a], z[:, h + k, :, :-a]) for k in (1, 2)]
    torch.testing.assert_close(loss, (first + later[0] + later[1]) / 3)
    torch.testing.assert_close(metrics["z_loss_step_k"], later[1].detach())
    # and the gradient flows through the imagined frames, as through the planning rollout (not detached)
    grads = [
        torch.autograd.grad(x, list(wm.predictor.parameters())) for x in (loss, (first + sum(later)) / 3)
    ]
    for mine, rollout in zip(*grads, strict=True):
        torch.testing.assert_close(mine, rollout)
    # one-step training is untouched: the same model and frames with rollout_steps=1 give the reference loss
    wm.cfg = load_config([*TINY, "predictor.dropout=0", "decoder=none"])
    window = {k: v[:, : h + 1] for k, v in obs.items()}
    torch.testing.assert_close(wm.loss(window, act[:, : h + 1])[0], first)


@pytest.mark.parametrize("concat", ["channel", "token"])
def test_proprio_loss_weight_scales_only_the_proprio_errors(concat):
    base = [*TINY, "predictor.dropout=0", "decoder=none", f"concat={concat}"]
    wm = build_world_model(load_config(base)).train()
    obs, act = _batch(load_config(base))
    _, plain = wm.loss(obs, act)
    n_vis, n_prop = (64, 10) if concat == "channel" else (16, 1)  # channels / tokens per part
    wm.cfg = load_config([*base, "training.proprio_loss_weight=7"])
    loss, weighted = wm.loss(obs, act)
    # the logged parts stay unweighted; the loss is the mean of [visual, 7 x proprio] squared errors
    torch.testing.assert_close(weighted["z_proprio_loss"], plain["z_proprio_loss"])
    expected = (n_vis * plain["z_visual_loss"] + 7 * n_prop * plain["z_proprio_loss"]) / (n_vis + n_prop)
    torch.testing.assert_close(loss, expected)


def test_rollout_steps_refuses_memory_sequence_training():
    with pytest.raises(ValueError, match="rollout_steps"):
        load_config([*TINY, "training.rollout_steps=2", "data.sequence_length=8"])


def test_z_loss_excludes_action_dims_and_detaches_target():
    cfg = load_config([*TINY, "predictor.dropout=0", "decoder=none"])
    wm = build_world_model(cfg).train()
    obs, act = _batch(cfg)
    z = wm.encode(obs, act)
    z_pred = wm.predict(z[:, :3])
    expected = torch.nn.functional.mse_loss(z_pred[..., :-10], z[:, 1:, :, :-10])
    loss, metrics = wm.loss(obs, act)
    torch.testing.assert_close(loss, expected)
    # Changing only the target frame's action changes nothing in the loss (action dims are excluded).
    act2 = act.clone()
    act2[:, -1] += 5
    torch.testing.assert_close(wm.loss(obs, act2)[0], loss)
    # Target detached: the gradient reaches the proprio encoder only through the source frames.
    wm.zero_grad(set_to_none=True)
    obs_src_only = {k: v.clone() for k, v in obs.items()}
    loss.backward()
    g_full = wm.proprio_encoder.proj.weight.grad.clone()
    wm.zero_grad(set_to_none=True)
    z = wm.encode(obs_src_only, act)
    z_pred = wm.predict(z[:, :3])
    tgt = z[:, 1:].detach()
    torch.nn.functional.mse_loss(z_pred[..., :-10], tgt[..., :-10]).backward()
    torch.testing.assert_close(wm.proprio_encoder.proj.weight.grad, g_full)


def test_vq_quantizer_updates_codebook_and_adds_commitment():
    dec = VQVAEDecoder(
        emb_dim=8, channel=16, n_res_block=1, n_res_channel=8, quantize=True, n_embed=32
    ).train()
    before = dec.quantizer.embed.clone()
    images, diff = dec(torch.randn(2, 1, 16, 8))
    assert images.shape == (2, 3, 64, 64)
    assert diff.item() > 0
    assert not torch.equal(before, dec.quantizer.embed)
    assert not any(n.startswith("quantizer") for n, _ in dec.named_parameters())


def test_cls_encoder_with_transposed_conv_decoder():
    cfg = load_config([*TINY, "encoder.feature=cls", "decoder=transposed_conv", "decoder.depth=4"])
    wm = build_world_model(cfg).eval()
    obs, act = _batch(cfg, b=1)
    with torch.no_grad():
        z = wm.encode(obs, act)
        assert z.shape == (1, 4, 1, 64 + 20)
        assert wm.decode(z)["visual"].shape == (1, 4, 3, 64, 64)
    with pytest.raises(ValueError, match="transposed_conv"):
        build_world_model(load_config([*TINY, "encoder.feature=cls"]))

"""The fast planning rollout (KV cache, last-frame pruning, SDPA, bf16, aligned width) equals WorldModel.rollout."""

import pytest
import torch

from dinowm_core.planning.rollout import Rollout, fast_rollout
from tests.planning.plan_helpers import tiny_obs, tiny_wm


@pytest.mark.parametrize("concat", ["channel", "token"])
@pytest.mark.parametrize("num_hist", [1, 2, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_fast_rollout_equals_reference_rollout(concat, num_hist, residual):
    wm = tiny_wm(f"concat={concat}", f"num_hist={num_hist}", f"predictor.residual={str(residual).lower()}")
    cfg = wm.cfg
    for n_ctx in range(1, num_hist + 1):
        obs = tiny_obs(cfg, b=3, t=n_ctx, seed=n_ctx)
        with torch.no_grad():
            z_obs0 = wm.encode_obs(obs)
            for horizon in range(1, 7):
                act = torch.randn(3, max(horizon, n_ctx), cfg.action_dim)
                ref_obs, ref_z = wm.rollout(obs, act)
                for kv_cache in (True, False):
                    fast_obs, fast_z = fast_rollout(wm, z_obs0, act, kv_cache=kv_cache)
                    assert fast_z.shape == ref_z.shape
                    torch.testing.assert_close(fast_z, ref_z, atol=1e-5, rtol=0)
                    torch.testing.assert_close(fast_obs["visual"], ref_obs["visual"], atol=1e-5, rtol=0)
                    torch.testing.assert_close(fast_obs["proprio"], ref_obs["proprio"], atol=1e-5, rtol=0)


def test_fast_rollout_gradients_match():
    wm = tiny_wm("num_hist=3", "predictor.residual=false")
    with torch.no_grad():
        z_obs0 = wm.encode_obs(tiny_obs(wm.cfg, b=2))
    act = torch.randn(2, 5, wm.cfg.action_dim)
    grads = []
    for fn in (lambda a: wm.rollout(None, a, z_obs0=z_obs0), lambda a: fast_rollout(wm, z_obs0, a)):
        a = act.clone().requires_grad_(True)
        z_obs, _ = fn(a)
        (g,) = torch.autograd.grad(z_obs["visual"][:, -1].square().sum(), a)
        grads.append(g)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_is_close_and_returns_fp32():
    wm = tiny_wm("predictor.residual=false")
    with torch.no_grad():
        z_obs0 = wm.encode_obs(tiny_obs(wm.cfg, b=2))
        act = torch.randn(2, 5, wm.cfg.action_dim)
        _, ref = fast_rollout(wm, z_obs0, act)
        _, amp = fast_rollout(wm, z_obs0, act, amp=True)
    assert amp.dtype == torch.float32
    rel = (amp - ref).norm() / ref.norm()
    assert 0 < rel < 0.02


def test_too_few_actions_for_the_context_is_an_error():
    wm = tiny_wm()
    with torch.no_grad():
        z_obs0 = wm.encode_obs(tiny_obs(wm.cfg, b=1, t=3))
    with pytest.raises(ValueError, match="at least 3 actions"):
        fast_rollout(wm, z_obs0, torch.randn(1, 2, wm.cfg.action_dim))


@pytest.mark.parametrize("concat", ["channel", "token"])
def test_width_aligned_rollout_matches(concat):
    from dinowm_core import build_world_model, load_config

    cfg = load_config(["env=wall", "encoder=dino_tiny", "img_size=64", "decoder=none", f"concat={concat}"])
    wm = build_world_model(cfg).eval()
    dp = 10 if concat == "channel" else 64
    z0 = {"visual": torch.randn(3, 1, 16, 64), "proprio": torch.randn(3, 1, dp)}
    act = torch.randn(3, 6, 10)
    with torch.no_grad():
        ref, _ = wm.rollout(None, act, z_obs0=z0)
        got, _ = fast_rollout(wm, z0, act, align=True)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=2e-5)


def _wall_wm():
    from dinowm_core import build_world_model, load_config

    wm = build_world_model(
        load_config(["env=wall", "encoder=dino_tiny", "img_size=64", "decoder=none"])
    ).eval()
    assert wm.predictor.dim % 8  # so that the aligned copy differs from the predictor
    return wm


def test_rollout_builds_the_aligned_copy_once(monkeypatch):
    from dinowm_core.models.predictor import ViTPredictor

    built = []
    width_aligned = ViTPredictor.width_aligned

    def counting(self, *args):
        built.append(self)
        return width_aligned(self, *args)

    monkeypatch.setattr(ViTPredictor, "width_aligned", counting)
    wm = _wall_wm()
    z0 = {"visual": torch.randn(2, 1, 16, 64), "proprio": torch.randn(2, 1, 10)}
    act = torch.randn(2, 3, 10)
    rollout = Rollout(wm, align=True)
    with torch.no_grad():
        ref, _ = wm.rollout(None, act, z_obs0=z0)
        first, _ = rollout(z0, act)
        second, _ = rollout(z0, act)
    assert len(built) == 1
    assert torch.equal(first["visual"], second["visual"])
    torch.testing.assert_close(first["visual"], ref["visual"], rtol=0, atol=2e-5)
    # With gradients (GD planning) the plain predictor runs: the frozen copy cannot carry them.
    a = act.clone().requires_grad_(True)
    z_obs, _ = rollout(z0, a)
    assert z_obs["visual"].requires_grad and len(built) == 1
    torch.testing.assert_close(z_obs["visual"].detach(), ref["visual"], rtol=0, atol=2e-5)


def test_fast_rollout_follows_weight_updates():
    """Each fast_rollout call builds its own Rollout, hence a fresh aligned copy."""
    wm = _wall_wm()
    z0 = {"visual": torch.randn(2, 1, 16, 64), "proprio": torch.randn(2, 1, 10)}
    act = torch.randn(2, 3, 10)
    with torch.no_grad():
        before, _ = fast_rollout(wm, z0, act, align=True)
        wm.predictor.norm.bias.add_(1.0)
        after, _ = fast_rollout(wm, z0, act, align=True)
        ref, _ = wm.rollout(None, act, z_obs0=z0)
    assert not torch.allclose(before["visual"], after["visual"])
    torch.testing.assert_close(after["visual"], ref["visual"], rtol=0, atol=2e-5)


def test_compiled_rollout_matches_eager():
    """torch.compile of the aligned bf16 planning rollout (the GPU fast path) gives the eager results.

    Horizon 4 with num_hist 3 covers the cached steps and a sliding window; one shape keeps the compile short.
    """
    from dinowm_core import build_world_model, load_config

    wm = build_world_model(
        load_config(["env=wall", "encoder=dino_tiny", "img_size=64", "decoder=none", "num_hist=3"])
    ).eval()
    z0 = {"visual": torch.randn(4, 1, 16, 64), "proprio": torch.randn(4, 1, 10)}
    act = torch.randn(4, 4, 10)
    with torch.no_grad():
        ref, _ = fast_rollout(wm, z0, act, align=True, amp=True)
        got, _ = fast_rollout(wm, z0, act, align=True, amp=True, compile=True)
    assert got["visual"].dtype == torch.float32
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=2e-2)


@pytest.mark.parametrize("name", ["mpc_cem", "mpc_gd"])
def test_planner_compile_flag_reaches_the_rollout(monkeypatch, name):
    from dinowm_core import load_config
    from dinowm_core.planning import make_planner, rollout

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[3].shape)  # act
        return rollout._rollout_frames(*args, **kwargs)

    monkeypatch.setattr(rollout, "_compiled_rollout_frames", lambda: counting)
    wm = tiny_wm()
    with torch.no_grad():
        z0, goal = wm.encode_obs(tiny_obs(wm.cfg, b=2)), wm.encode_obs(tiny_obs(wm.cfg, b=2, seed=1))
    for flag in ("false", "true"):
        cfg = load_config(
            [
                f"planner={name}",
                "planner.horizon=3",
                "planner.mpc.n_taken_actions=1",
                f"planner.compile={flag}",
                "planner.cem.num_samples=8",
                "planner.cem.topk=2",
                "planner.cem.opt_steps=1",
                "planner.gd.opt_steps=1",
            ]
        )
        make_planner(cfg.planner, wm).plan(z0, goal)
        assert bool(calls) == (flag == "true")


def test_checkpoint_without_statistics_plans_in_env_units():
    """PushT's preset carries the reference's pixels-per-unit (100) for the importer; planning must not use it."""
    import numpy as np

    from dinowm_core import build_world_model, load_config
    from dinowm_core.evaluation.adapter import ModelAdapter

    wm = build_world_model(load_config(["env=pusht", "encoder=dino_tiny", "img_size=64", "decoder=none"]))
    wm.normalization = None
    norm = ModelAdapter(wm).normalizer
    assert wm.cfg.env.action_scale == 100.0
    a = np.array([[0.3, -0.2]])
    np.testing.assert_allclose(norm.normalize_actions(a), a)

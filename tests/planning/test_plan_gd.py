"""GD planner: solves a quadratic, reference update rule, Adam, bounds, determinism."""

import pytest
import torch

from dinowm_core.planning import ActionBounds
from tests.planning.plan_helpers import IntegratorWM, gd_cfg, latents, plan_once, tiny_obs, tiny_wm

A = 3


def gd_plan(wm, z0, zg, *, horizon, seeds=None, init=None, bounds=None, **gd):
    """One open-loop GD plan through the planner interface, one RNG stream per episode seeded ``seeds``."""
    return plan_once(wm, z0, zg, gd_cfg(horizon, **gd), seeds, init=init, bounds=bounds)


def _problem(b=2):
    g = torch.Generator().manual_seed(0)
    return latents(torch.randn(b, A, generator=g)), latents(torch.randn(b, A, generator=g))


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.05)])
def test_gd_solves_an_analytic_quadratic(optimizer, lr):
    wm = IntegratorWM(A)
    z0, zg = _problem()
    res = gd_plan(
        wm,
        z0,
        zg,
        horizon=4,
        opt_steps=200,
        lr=lr,
        action_noise=0.0,
        optimizer=optimizer,
        seeds=[0, 1],
    )
    reached = z0["proprio"][:, 0] + res.actions.sum(dim=1)
    torch.testing.assert_close(reached, zg["proprio"][:, 0], atol=1e-2, rtol=0)
    assert (res.loss < 1e-4).all()


def test_one_sgd_step_is_the_reference_update():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    init = torch.randn(2, 2, A)
    res = gd_plan(wm, z0, zg, horizon=2, opt_steps=1, lr=0.3, action_noise=0.0, init=init)
    # loss_b = 2 * mean((s0 + sum a - g)^2) (visual + alpha=1 proprio); d/da_t = 4/A * (s0 + sum a - g)
    resid = z0["proprio"][:, 0] + init.sum(1) - zg["proprio"][:, 0]
    expected = init - 0.3 * (4 / A * resid)[:, None]
    torch.testing.assert_close(res.actions, expected)
    # the noise term: N(0, noise^2) per element, drawn from the given generator stream
    noisy = gd_plan(
        wm,
        z0,
        zg,
        horizon=2,
        opt_steps=1,
        lr=0.3,
        action_noise=0.1,
        init=init,
        seeds=[4, 5],
    )
    noise = []
    for seed in (4, 5):  # one stream per episode
        stream = torch.Generator().manual_seed(seed)
        torch.randn(2, A, generator=stream)  # the randn initial actions come first (overridden by init)
        noise.append(torch.randn(2, A, generator=stream) * 0.1)
    noise = torch.stack(noise)
    torch.testing.assert_close(noisy.actions, expected + noise)


def test_bounds_and_zero_init():
    wm = IntegratorWM(A)
    z0, zg = latents(torch.zeros(1, A)), latents(torch.full((1, A), 5.0))
    b = ActionBounds(torch.full((A,), -0.2), torch.full((A,), 0.2))
    res = gd_plan(wm, z0, zg, horizon=2, opt_steps=20, lr=0.5, sample_type="zero", bounds=b, seeds=[0])
    assert res.actions.max() <= 0.2 and res.actions.min() >= -0.2
    assert res.actions.mean() > 0.19
    with pytest.raises(ValueError, match="sample_type"):
        gd_plan(wm, z0, zg, horizon=2, sample_type="uniform")  # the config refuses it


def test_gd_is_deterministic_and_batched_equals_single():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=3, opt_steps=5, lr=0.1)
    batched = gd_plan(wm, z0, zg, seeds=[3, 4], **kw)
    again = gd_plan(wm, z0, zg, seeds=[3, 4], **kw)
    assert torch.equal(batched.actions, again.actions)
    one = gd_plan(wm, {k: v[1:] for k, v in z0.items()}, {k: v[1:] for k, v in zg.items()}, seeds=[4], **kw)
    torch.testing.assert_close(one.actions, batched.actions[1:], atol=1e-6, rtol=0)


def test_gd_through_a_real_world_model_lowers_the_objective():
    wm = tiny_wm()
    with torch.no_grad():
        z0 = wm.encode_obs(tiny_obs(wm.cfg, b=2, seed=1))
        zg = wm.encode_obs(tiny_obs(wm.cfg, b=2, seed=2))
    res = gd_plan(wm, z0, zg, horizon=3, opt_steps=15, lr=0.5, seeds=[0, 1])
    assert (res.info["loss"][-1] < res.info["loss"][0]).all()
    assert all(p.grad is None for p in wm.parameters())  # the model stays untouched

"""CEM: solves a quadratic, batched == per-episode, deterministic, bounds, chunking, bad input, discrete."""

import pytest
import torch

from dinowm_core.config import CEMConfig, ObjectiveConfig
from dinowm_core.planning import ActionBounds, PlanProblem, Rollout, cem_discrete
from dinowm_core.planning.rollout import fast_rollout
from tests.planning.plan_helpers import IntegratorWM, cem_cfg, gens, latents, plan_once, tiny_obs, tiny_wm

A = 4


def CEM(wm, z0, zg, *, horizon, seeds=None, init=None, bounds=None, **cem):
    """One open-loop CEM plan through the planner interface, one RNG stream per episode seeded ``seeds``."""
    return plan_once(wm, z0, zg, cem_cfg(horizon, **cem), seeds, init=init, bounds=bounds)


def DCEM(wm, z0, zg, *, horizon, action_set, seeds=None, **cem):
    """Discrete CEM on the planning problem (wm, z0 -> zg)."""
    prob = PlanProblem(wm, Rollout(wm), z0, zg, horizon, ObjectiveConfig(), action_dim=action_set.shape[1])
    return cem_discrete(prob, CEMConfig(**cem), action_set, generator=gens(seeds) if seeds else None)


def _problem(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return latents(torch.randn(b, A, generator=g)), latents(torch.randn(b, A, generator=g) * 2)


def test_cem_solves_an_analytic_quadratic():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    res = CEM(wm, z0, zg, horizon=3, num_samples=200, topk=20, opt_steps=15, seeds=[0, 1, 2])
    reached = z0["proprio"][:, 0] + res.actions.sum(dim=1)
    torch.testing.assert_close(reached, zg["proprio"][:, 0], atol=0.05, rtol=0)
    assert res.actions.shape == (3, 3, A) and res.loss.shape == (3,)
    assert (res.loss < 1e-3).all()
    assert (res.info["best_loss"][-1] < res.info["best_loss"][0]).all()
    # One batched rollout call per iteration (+ one for the returned plan), not one per episode.
    assert wm.calls == 15 + 1


def _sub(z, i):
    return {k: v[i : i + 1] for k, v in z.items()}


def test_batched_cem_equals_separate_single_episode_plans():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=4, num_samples=50, topk=5, opt_steps=4)
    batched = CEM(wm, z0, zg, seeds=[10, 11, 12], **kw)
    for i, seed in enumerate([10, 11, 12]):
        single = CEM(wm, _sub(z0, i), _sub(zg, i), seeds=[seed], **kw)
        torch.testing.assert_close(batched.actions[i : i + 1], single.actions, atol=0, rtol=0)
        torch.testing.assert_close(batched.loss[i : i + 1], single.loss, atol=0, rtol=0)


def test_batched_cem_equals_separate_plans_with_a_real_world_model():
    wm = tiny_wm()
    with torch.no_grad():
        z0 = wm.encode_obs(tiny_obs(wm.cfg, b=2, seed=1))
        zg = wm.encode_obs(tiny_obs(wm.cfg, b=2, seed=2))
    kw = dict(horizon=3, num_samples=24, topk=4, opt_steps=2)
    batched = CEM(wm, z0, zg, seeds=[5, 6], **kw)
    for i, seed in enumerate([5, 6]):
        single = CEM(wm, _sub(z0, i), _sub(zg, i), seeds=[seed], **kw)
        torch.testing.assert_close(batched.actions[i : i + 1], single.actions, atol=1e-5, rtol=0)


def test_same_seed_same_plan_other_seed_other_plan():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=3, num_samples=40, topk=4, opt_steps=3)
    p1 = CEM(wm, z0, zg, seeds=[7, 7, 7], **kw)
    p2 = CEM(wm, z0, zg, seeds=[7, 7, 7], **kw)
    p3 = CEM(wm, z0, zg, seeds=[8, 8, 8], **kw)
    assert torch.equal(p1.actions, p2.actions)
    assert not torch.equal(p1.actions, p3.actions)


def test_chunking_does_not_change_the_plan():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=3, num_samples=40, topk=4, opt_steps=3)
    whole = CEM(wm, z0, zg, seeds=[1, 2, 3], **kw)
    chunked = CEM(wm, z0, zg, seeds=[1, 2, 3], chunk_size=7, **kw)
    assert torch.equal(whole.actions, chunked.actions)


def test_bounds_are_respected_and_bind_when_the_goal_is_out_of_reach():
    wm = IntegratorWM(A)
    z0, zg = latents(torch.zeros(2, A)), latents(torch.full((2, A), 10.0))
    bounds = ActionBounds(torch.full((A,), -0.5), torch.full((A,), 0.5))
    res = CEM(wm, z0, zg, horizon=3, num_samples=64, topk=8, opt_steps=6, bounds=bounds, seeds=[0, 1])
    assert res.actions.min() >= -0.5 and res.actions.max() <= 0.5
    assert res.actions.mean() > 0.45  # pushes against the upper bound
    free = CEM(wm, z0, zg, horizon=3, num_samples=64, topk=8, opt_steps=6, seeds=[0, 1])
    assert free.actions.max() > 0.5  # the reference behaviour (no bounds) stays available


def test_warm_start_sets_the_initial_mean():
    wm = IntegratorWM(A)
    z0, zg = _problem(b=1)
    init = (zg["proprio"][:, 0] - z0["proprio"][:, 0])[:, None]  # the exact solution in one step, then zeros
    res = CEM(wm, z0, zg, horizon=2, num_samples=10, topk=2, opt_steps=1, init=init, var_scale=5.0)
    assert res.info["best_loss"][0, 0] == pytest.approx(0.0, abs=1e-10)  # sample 0 = mean = warm start


def test_bad_inputs_raise_clear_errors():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    with pytest.raises(ValueError, match="horizon"):
        CEM(wm, z0, zg, horizon=0)
    with pytest.raises(ValueError, match="topk"):
        CEM(wm, z0, zg, horizon=2, num_samples=10, topk=11)
    with pytest.raises(ValueError, match="expects 4"):
        CEM(wm, z0, zg, horizon=2, init=torch.zeros(3, 2, A + 1))
    with pytest.raises(ValueError, match="expects 4"):
        CEM(wm, z0, zg, horizon=2, bounds=ActionBounds(torch.zeros(3), torch.ones(3)))
    with pytest.raises(ValueError, match="seeds for 3 episodes"):
        CEM(wm, z0, zg, horizon=2, seeds=[0, 1])
    with pytest.raises(ValueError, match="low must be <= high"):
        ActionBounds(torch.ones(A), torch.zeros(A))


def test_real_world_model_cem_finds_the_actions_of_a_known_rollout():
    wm = tiny_wm("num_hist=1")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z0 = wm.encode_obs(tiny_obs(wm.cfg, b=1))
        true_act = torch.randn(1, 2, wm.cfg.action_dim, generator=g)
        goal, _ = fast_rollout(wm, z0, true_act)
    z_goal = {k: v[:, -1:] for k, v in goal.items()}
    res = CEM(wm, z0, z_goal, horizon=2, num_samples=64, topk=8, opt_steps=6, seeds=[0])
    start = CEM(wm, z0, z_goal, horizon=2, num_samples=2, topk=2, opt_steps=1, var_scale=1e-6).loss
    assert res.loss.item() < 0.5 * start.item()  # from the zero-action plan's loss


def test_discrete_cem_picks_the_best_action_sequence():
    wm = IntegratorWM(2)
    action_set = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    z0 = latents(torch.zeros(2, 2))
    zg = latents(torch.tensor([[2.0, -1.0], [-1.0, 1.0]]))
    res = DCEM(
        wm,
        z0,
        zg,
        horizon=3,
        action_set=action_set,
        num_samples=60,
        topk=6,
        opt_steps=5,
        seeds=[0, 1],
    )
    reached = res.actions.sum(dim=1)
    torch.testing.assert_close(reached, zg["proprio"][:, 0])
    assert res.loss.abs().max() == 0
    assert set(res.info["indices"].flatten().tolist()) <= set(range(5))
    single = DCEM(
        wm,
        _sub(z0, 1),
        _sub(zg, 1),
        horizon=3,
        action_set=action_set,
        num_samples=60,
        topk=6,
        opt_steps=5,
        seeds=[1],
    )
    assert torch.equal(single.info["indices"], res.info["indices"][1:])
    with pytest.raises(ValueError, match="expects 2"):
        DCEM(wm, z0, zg, horizon=3, action_set=torch.zeros(4, 3))

"""MPPI: solves a quadratic, batched == per-episode, deterministic, weights, std adaptation, MPC warm start,
config errors, presets."""

import pytest
import torch

from dinowm_core import load_config
from dinowm_core.config import ConfigError, MPCConfig, MPPIConfig, PlannerConfig
from dinowm_core.planning import make_planner
from dinowm_core.planning.mppi import mppi_weights
from tests.conftest import TINY
from tests.planning.plan_helpers import IntegratorWM, latents, plan_once

A = 3


def mppi_cfg(horizon: int, name: str = "mppi", n_taken: int = 1, **fields) -> PlannerConfig:
    return PlannerConfig(
        name=name, horizon=horizon, mppi=MPPIConfig(**fields), mpc=MPCConfig(n_taken_actions=n_taken)
    )


def MPPI(wm, z0, zg, *, horizon, seeds=None, init=None, **fields):
    return plan_once(wm, z0, zg, mppi_cfg(horizon, **fields), seeds, init=init)


def _problem(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return latents(torch.randn(b, A, generator=g)), latents(torch.randn(b, A, generator=g) * 2)


def _sub(z, i):
    return {k: v[i : i + 1] for k, v in z.items()}


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_mppi_solves_an_analytic_quadratic(beta):
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(num_samples=200, opt_steps=15, temperature=0.01, adapt_std=True, beta=beta)
    res = MPPI(wm, z0, zg, horizon=4, seeds=[0, 1, 2], **kw)
    reached = z0["proprio"][:, 0] + res.actions.sum(dim=1)
    torch.testing.assert_close(reached, zg["proprio"][:, 0], atol=0.1, rtol=0)
    assert res.actions.shape == (3, 4, A) and (res.loss < 1e-3).all()
    assert wm.calls == 15 + 1  # one batched rollout per iteration + the returned mean's loss
    assert res.info["n_rollouts"] == 15 * 3 * 200 + 3


def test_fixed_std_stays_and_adapted_std_shrinks():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    fixed = MPPI(wm, z0, zg, horizon=3, seeds=[0, 1, 2], num_samples=50, opt_steps=5, var_scale=0.7)
    assert torch.equal(fixed.info["final_std"], torch.full((3, 3, A), 0.7))
    adapted = MPPI(
        wm, z0, zg, horizon=3, seeds=[0, 1, 2], num_samples=50, opt_steps=5, adapt_std=True, min_std=0.05
    )
    std = adapted.info["final_std"]
    assert (std < 1).all() and (std >= 0.05).all()


def test_weights_are_a_softmax_of_the_negative_loss_per_episode():
    loss = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 1e6]])
    w = mppi_weights(loss, temperature=1.0)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(w[0], torch.softmax(-loss[0], dim=0))
    torch.testing.assert_close(w[1], torch.tensor([0.5, 0.5, 0.0]))  # finite, whatever the scale
    cold = mppi_weights(loss, temperature=1e-6)
    assert torch.equal(cold[0], torch.tensor([1.0, 0.0, 0.0]))  # the best sample wins
    hot = mppi_weights(loss[:1], temperature=1e6)
    torch.testing.assert_close(hot, torch.full((1, 3), 1 / 3))  # the plain average


def test_batched_mppi_equals_separate_single_episode_plans():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=4, num_samples=40, opt_steps=3, beta=2.0, adapt_std=True)
    batched = MPPI(wm, z0, zg, seeds=[10, 11, 12], **kw)
    for i, seed in enumerate([10, 11, 12]):
        single = MPPI(wm, _sub(z0, i), _sub(zg, i), seeds=[seed], **kw)
        torch.testing.assert_close(batched.actions[i : i + 1], single.actions, atol=0, rtol=0)


def test_same_seed_same_plan_other_seed_other_plan():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=3, num_samples=40, opt_steps=3)
    p1 = MPPI(wm, z0, zg, seeds=[7, 7, 7], **kw)
    p2 = MPPI(wm, z0, zg, seeds=[7, 7, 7], **kw)
    p3 = MPPI(wm, z0, zg, seeds=[8, 8, 8], **kw)
    assert torch.equal(p1.actions, p2.actions)
    assert not torch.equal(p1.actions, p3.actions)


def test_chunking_does_not_change_the_plan():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=3, num_samples=40, opt_steps=3)
    assert torch.equal(
        MPPI(wm, z0, zg, seeds=[1, 2, 3], **kw).actions,
        MPPI(wm, z0, zg, seeds=[1, 2, 3], chunk_size=7, **kw).actions,
    )


def test_warm_start_sets_the_initial_mean():
    wm = IntegratorWM(A)
    z0, zg = _problem(b=1)
    init = (zg["proprio"][:, 0] - z0["proprio"][:, 0])[:, None]  # the exact solution in one step, then zeros
    res = MPPI(wm, z0, zg, horizon=2, num_samples=10, opt_steps=1, init=init, temperature=1e-4, var_scale=5.0)
    assert res.info["best_loss"][0, 0] == pytest.approx(0.0, abs=1e-10)  # sample 0 = mean = warm start
    torch.testing.assert_close(res.actions, torch.cat([init, torch.zeros(1, 1, A)], dim=1))


def test_mpc_mppi_warm_starts_from_the_untaken_tail():
    planner = make_planner(
        mppi_cfg(4, name="mpc_mppi", n_taken=1, num_samples=20, opt_steps=2), IntegratorWM(A)
    )
    z0, zg = _problem(b=2)
    first, state = planner.plan(z0, zg, planner.init_state(2, [0, 1]))
    torch.testing.assert_close(state.warm_start, first.actions[:, 1:], atol=0, rtol=0)
    assert state.warm_elites is None


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("planner.mppi.temperature=0", "mppi.temperature"),
        ("planner.mppi.num_samples=0", "mppi.num_samples"),
        ("planner.mppi.beta=-2", "mppi.beta"),
        ("planner.mppi.min_std=5", "planner.mppi.min_std"),
        ("planner.mppi.temp=1", "mppi.temp"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([*TINY, "planner=mppi", override])


@pytest.mark.parametrize("name", ["mppi", "mpc_mppi"])
def test_make_planner_builds_mppi_from_its_preset(name):
    cfg = load_config([*TINY, f"planner={name}", "planner.horizon=2", "planner.mpc.n_taken_actions=1",
                       "planner.mppi.num_samples=20", "planner.mppi.opt_steps=2"]).planner  # fmt: skip
    planner = make_planner(cfg, IntegratorWM(A))
    assert planner.kind == "mppi" and planner.closed_loop == name.startswith("mpc_")
    result, _ = planner.plan(*_problem(b=2), planner.init_state(2, [0, 1]))
    assert result.execute.shape == (2, 1 if planner.closed_loop else 2, A)

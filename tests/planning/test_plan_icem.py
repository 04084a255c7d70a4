"""iCEM: solves a quadratic, batched == per-episode, deterministic, coloured noise, population decay, elite
keeping, MPC shift of the elites, config errors, the plan state with elites."""

from dataclasses import replace

import pytest
import torch

from dinowm_core import load_config
from dinowm_core.config import ConfigError, ICEMConfig, MPCConfig, PlannerConfig
from dinowm_core.planning import PlanState, make_planner
from dinowm_core.planning.icem import num_kept, population_sizes
from dinowm_core.planning.noise import colored_noise
from dinowm_core.presets import config_dict, plan_config
from tests.conftest import TINY
from tests.planning.plan_helpers import IntegratorWM, latents, plan_once

A = 3


def icem_cfg(horizon: int, name: str = "icem", n_taken: int = 1, **fields) -> PlannerConfig:
    icem = ICEMConfig(**fields)
    return PlannerConfig(name=name, horizon=horizon, icem=icem, mpc=MPCConfig(n_taken_actions=n_taken))


def ICEM(wm, z0, zg, *, horizon, seeds=None, init=None, **fields):
    return plan_once(wm, z0, zg, icem_cfg(horizon, **fields), seeds, init=init)


def _problem(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return latents(torch.randn(b, A, generator=g)), latents(torch.randn(b, A, generator=g) * 2)


def _sub(z, i):
    return {k: v[i : i + 1] for k, v in z.items()}


@pytest.mark.parametrize("execute", ["best", "mean"])
def test_icem_solves_an_analytic_quadratic(execute):
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(num_samples=200, topk=20, opt_steps=15, execute=execute)
    res = ICEM(wm, z0, zg, horizon=3, seeds=[0, 1, 2], **kw)
    reached = z0["proprio"][:, 0] + res.actions.sum(dim=1)
    start = 2 * ((z0["proprio"][:, 0] - zg["proprio"][:, 0]) ** 2).mean(dim=1)  # the zero plan's loss
    assert (start > 1).all() and (res.loss < 0.03).all()
    torch.testing.assert_close(reached, zg["proprio"][:, 0], atol=0.2, rtol=0)
    assert res.actions.shape == (3, 3, A)
    assert (res.info["best_loss"][-1] < res.info["best_loss"][0]).all()
    # One batched rollout per iteration (+ one for the mean's loss when the mean is returned).
    assert wm.calls == 15 + (execute == "mean")
    extra = 3 if execute == "mean" else 0
    assert res.info["n_rollouts"] == 3 * sum(population_sizes(ICEMConfig(**kw))) + extra


def test_the_returned_loss_is_the_objective_of_the_returned_plan():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    res = ICEM(wm, z0, zg, horizon=3, num_samples=40, topk=4, opt_steps=3, seeds=[0, 1, 2])
    reached = z0["proprio"][:, 0] + res.actions.sum(dim=1)
    torch.testing.assert_close(res.loss, 2 * ((reached - zg["proprio"][:, 0]) ** 2).mean(dim=1))


def test_batched_icem_equals_separate_single_episode_plans():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=4, num_samples=50, topk=5, opt_steps=4)
    batched = ICEM(wm, z0, zg, seeds=[10, 11, 12], **kw)
    for i, seed in enumerate([10, 11, 12]):
        single = ICEM(wm, _sub(z0, i), _sub(zg, i), seeds=[seed], **kw)
        torch.testing.assert_close(batched.actions[i : i + 1], single.actions, atol=0, rtol=0)
        torch.testing.assert_close(batched.loss[i : i + 1], single.loss, atol=0, rtol=0)


def test_same_seed_same_plan_other_seed_other_plan():
    wm = IntegratorWM(A)
    z0, zg = _problem()
    kw = dict(horizon=3, num_samples=40, topk=4, opt_steps=3)
    p1 = ICEM(wm, z0, zg, seeds=[7, 7, 7], **kw)
    p2 = ICEM(wm, z0, zg, seeds=[7, 7, 7], **kw)
    p3 = ICEM(wm, z0, zg, seeds=[8, 8, 8], **kw)
    assert torch.equal(p1.actions, p2.actions)
    assert not torch.equal(p1.actions, p3.actions)


def _low_frequency_share(x: torch.Tensor) -> torch.Tensor:
    """x (..., H, A) -> share of the power in the lowest non-DC bins along H (averaged over everything else)."""
    power = torch.fft.rfft(x - x.mean(dim=-2, keepdim=True), dim=-2).abs() ** 2  # (..., F, A)
    power = power.mean(dim=tuple(range(power.ndim - 2)))[1:].mean(dim=-1)  # (F - 1,)
    return power[:2].sum() / power.sum()


def test_coloured_noise_has_unit_variance_and_beta_moves_power_to_low_frequencies():
    g = torch.Generator().manual_seed(0)
    white = colored_noise((2, 4000, 16, 2), 0.0, g, torch.device("cpu"))
    red = colored_noise((2, 4000, 16, 2), 2.0, g, torch.device("cpu"))
    for x in (white, red):
        torch.testing.assert_close(x.var(dim=(0, 1)), torch.ones(16, 2), atol=0.08, rtol=0)
    # White noise spreads its power evenly over the 8 non-DC bins (2/8 in the lowest two); 1/f^2 puts most there.
    assert abs(_low_frequency_share(white) - 0.25) < 0.03
    assert _low_frequency_share(red) > 0.75
    # Neighbouring steps are correlated under beta=2, not under white noise.
    lag1 = lambda x: (x[:, :, 1:] * x[:, :, :-1]).mean()  # noqa: E731
    assert abs(lag1(white)) < 0.03 and lag1(red) > 0.5


def test_coloured_noise_per_episode_generators_are_batch_invariant():
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    both = colored_noise((2, 5, 6, 2), 2.0, gens(), torch.device("cpu"))
    one = colored_noise((1, 5, 6, 2), 2.0, gens()[1:], torch.device("cpu"))
    assert torch.equal(both[1:], one)


def test_population_decays_by_gamma_down_to_twice_the_elites():
    cfg = ICEMConfig(num_samples=300, topk=10, opt_steps=6, population_decay=1.25)
    assert population_sizes(cfg) == [300, 240, 192, 153, 122, 98]
    assert population_sizes(cfg.model_copy(update={"topk": 60})) == [300, 240, 192, 153, 122, 120]
    assert population_sizes(cfg.model_copy(update={"population_decay": 1.0})) == [300] * 6


class RecordingProblemWM(IntegratorWM):
    """The integrator that records every batch of candidate actions it scores."""

    def __init__(self, action_dim):
        super().__init__(action_dim)
        self.batches = []

    def rollout(self, obs0, act, *, z_obs0):
        self.batches.append(act.clone())
        return super().rollout(obs0, act, z_obs0=z_obs0)


def test_kept_elites_join_the_next_iteration_without_being_rescored():
    wm = RecordingProblemWM(A)
    z0, zg = _problem(b=2)
    cfg = icem_cfg(3, num_samples=40, topk=10, opt_steps=3, keep_elites=0.3)
    res = plan_once(wm, z0, zg, cfg, [0, 1])
    assert [len(x) for x in wm.batches] == [2 * n for n in population_sizes(cfg.icem)]  # new rows only
    assert num_kept(cfg.icem) == 3
    # The best loss never gets worse: the kept elites carry the best sequence forward.
    best = res.info["best_loss"]
    assert (best[1:] <= best[:-1]).all()
    assert res.info["elites"].shape == (2, 10, 3, A)


@pytest.mark.parametrize("keep", [0.0, 0.5])
def test_the_final_elites_come_from_the_last_population_and_the_kept_elites(keep):
    wm = RecordingProblemWM(A)
    z0, zg = _problem(b=1)
    cfg = icem_cfg(2, num_samples=30, topk=10, opt_steps=2, keep_elites=keep)
    res = plan_once(wm, z0, zg, cfg, [0])
    first, second = wm.batches
    loss0 = 2 * ((z0["proprio"][:, 0] + first.sum(dim=1) - zg["proprio"][:, 0]) ** 2).mean(dim=1)
    kept = first[loss0.topk(num_kept(cfg.icem), largest=False).indices]
    pool = torch.cat([kept, second])
    final = res.info["elites"][0]
    assert all(any(torch.equal(e, p) for p in pool) for e in final)
    if keep:  # with these seeds a kept elite is among the final ones
        assert any(any(torch.equal(e, k) for k in kept) for e in final)


def test_mpc_icem_shifts_its_elites_and_mean_into_the_next_call():
    wm = RecordingProblemWM(A)
    planner = make_planner(icem_cfg(4, name="mpc_icem", n_taken=1, num_samples=30, topk=10, opt_steps=2), wm)
    z0, zg = _problem(b=2)
    first, state = planner.plan(z0, zg, planner.init_state(2, [0, 1]))
    n_keep = num_kept(planner.cfg.icem)
    assert state.warm_elites.shape == (2, 10, 3, A) and state.warm_start.shape == (2, 3, A)
    torch.testing.assert_close(state.warm_elites, first.info["elites"][:, :, 1:], atol=0, rtol=0)
    torch.testing.assert_close(state.warm_start, first.info["mean"][:, 1:], atol=0, rtol=0)
    wm.batches.clear()
    planner.plan(z0, zg, state)
    first_batch = wm.batches[0].view(2, 30, 4, A)  # the second call's first population
    shifted = torch.cat([state.warm_elites[:, :n_keep], torch.zeros(2, n_keep, 1, A)], dim=2)
    torch.testing.assert_close(first_batch[:, :n_keep], shifted, atol=0, rtol=0)


def test_plan_state_with_elites_round_trips_and_old_states_still_load():
    planner = make_planner(
        icem_cfg(3, name="mpc_icem", n_taken=1, num_samples=20, topk=4, opt_steps=1), IntegratorWM(A)
    )
    z0, zg = _problem(b=2)
    _, state = planner.plan(z0, zg, planner.init_state(2, [0, 1]))
    back = PlanState.from_bytes(state.to_bytes())
    assert torch.equal(back.warm_elites, state.warm_elites) and torch.equal(back.warm_start, state.warm_start)
    assert torch.equal(back.rng, state.rng) and back.step == state.step
    old = replace(state, warm_elites=None)  # what a state written before warm_elites existed holds
    assert PlanState.from_bytes(old.to_bytes()).warm_elites is None
    with pytest.raises(ValueError, match="warm_elites"):
        replace(state, warm_elites=torch.zeros(2, 3, A))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("planner.icem.topk=1", "planner.icem.topk"),
        ("planner.icem.topk=400", "planner.icem.topk"),
        ("planner.icem.beta=-1", "icem.beta"),
        ("planner.icem.population_decay=0.5", "icem.population_decay"),
        ("planner.icem.keep_elites=1.5", "icem.keep_elites"),
        ("planner.icem.momentum=1", "icem.momentum"),
        ("planner.icem.execute=last", "icem.execute"),
        ("planner.icem.num_sample=3", "icem.num_sample"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([*TINY, "planner=icem", override])


@pytest.mark.parametrize("name", ["icem", "mpc_icem"])
def test_make_planner_builds_icem_from_its_preset(name):
    cfg = load_config([*TINY, f"planner={name}", "planner.horizon=2", "planner.mpc.n_taken_actions=1",
                       "planner.icem.num_samples=20", "planner.icem.opt_steps=2"]).planner  # fmt: skip
    planner = make_planner(cfg, IntegratorWM(A))
    assert planner.kind == "icem" and planner.closed_loop == name.startswith("mpc_")
    z0, zg = _problem(b=2)
    result, state = planner.plan(z0, zg, planner.init_state(2, [0, 1]))
    assert result.execute.shape == (2, 1 if planner.closed_loop else 2, A)
    assert (state.warm_elites is not None) == planner.closed_loop


def test_planner_fast_is_the_env_s_measured_preset_or_the_conservative_default(tmp_path, monkeypatch):
    wall = load_config([*TINY, "planner=fast"])  # TINY is a Wall model
    assert wall.presets["planner"] == "fast/wall" and wall.planner.name.startswith("mpc_")
    pusht = load_config([*TINY, "env=pusht", "planner=fast"])
    assert pusht.presets["planner"] == "fast/default" and pusht.planner.name == "mpc_icem"
    # `dinowm plan` applies the env's planning preset; planner=fast still decides the planner.
    planned = plan_config(wall, ["planner=fast", "planner.icem.opt_steps=4"])
    assert planned.planner.name == wall.planner.name and planned.planner.icem.opt_steps == 4
    assert planned.presets["plan"] == "wall"
    # a conf dir without planner_fast files says what is missing
    monkeypatch.setenv("DINOWM_CONF_DIR", str(tmp_path))
    (tmp_path / "config.yaml").write_text("defaults: {planner: fast}\nenv: {name: wall}\n")
    with pytest.raises(ConfigError, match="planner=fast: no wall.yaml and no default.yaml"):
        config_dict([])

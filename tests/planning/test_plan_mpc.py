"""MPC warm starts and the planner factory."""

import pytest
import torch

from dinowm_core import load_config
from dinowm_core.data.normalization import Normalizer
from dinowm_core.planning import ActionBounds, MPCPlanner, PlanResult, make_planner, normalized_zero_action
from tests.conftest import TINY
from tests.planning.plan_helpers import IntegratorWM, gens, latents


class RecordingPlanner:
    def __init__(self, horizon, a_dim=2):
        self.horizon, self.a_dim, self.inits, self.count = horizon, a_dim, [], 0

    def __call__(self, z_obs0, z_goal, *, init=None, generator=None):
        self.inits.append(init)
        self.count += 1
        b = z_obs0["visual"].shape[0]
        acts = self.count * 100 + torch.arange(self.horizon, dtype=torch.float32)[None, :, None].expand(
            b, -1, self.a_dim
        )
        return PlanResult(actions=acts.clone(), loss=torch.zeros(b))


def test_mpc_returns_the_first_chunks_and_warm_starts_from_the_untaken_tail():
    plan = RecordingPlanner(horizon=5)
    mpc = MPCPlanner(plan, horizon=5, n_taken_actions=2)
    mpc.reset(3)
    z = latents(torch.zeros(3, 2))
    first = mpc.act(z, z)
    assert first.shape == (3, 2, 2) and torch.equal(first[0, :, 0], torch.tensor([100.0, 101.0]))
    assert plan.inits[0] is None
    second = mpc.act(z, z)
    assert torch.equal(plan.inits[1][0, :, 0], torch.tensor([102.0, 103.0, 104.0]))  # untaken tail
    assert torch.equal(second[0, :, 0], torch.tensor([200.0, 201.0]))
    mpc.reset(3)
    mpc.act(z, z)
    assert plan.inits[2] is None  # reset forgets warm starts
    with pytest.raises(ValueError, match="batch of 2"):
        mpc.act(latents(torch.zeros(2, 2)), z)


def test_mpc_with_n_taken_equal_to_horizon_has_no_warm_start():
    plan = RecordingPlanner(horizon=3)
    mpc = MPCPlanner(plan, horizon=3, n_taken_actions=3)
    z = latents(torch.zeros(1, 2))
    mpc.act(z, z)
    mpc.act(z, z)
    assert plan.inits == [None, None]
    with pytest.raises(ValueError, match="n_taken_actions"):
        MPCPlanner(plan, horizon=3, n_taken_actions=4)


def test_mpc_cem_closed_loop_reaches_the_goal_and_pads_the_warm_start():
    cfg = load_config(
        [
            *TINY,
            "planner=mpc_cem",
            "planner.horizon=4",
            "planner.mpc.n_taken_actions=2",
            "planner.cem.num_samples=64",
            "planner.cem.topk=8",
            "planner.cem.opt_steps=6",
        ]
    )
    wm = IntegratorWM(3)
    mpc = make_planner(cfg, wm)
    assert isinstance(mpc, MPCPlanner) and mpc.n_taken_actions == 2
    s, goal = torch.zeros(2, 3), torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    mpc.reset(2)
    dist = [(goal - s).norm(dim=1)]
    for _ in range(3):
        chunk = mpc.act(latents(s), latents(goal), generator=gens([0, 1]))
        assert chunk.shape == (2, 2, 3)
        s = s + chunk.sum(dim=1)  # the "env" executes the chunks
        dist.append((goal - s).norm(dim=1))
    assert (dist[-1] < 0.5 * dist[0]).all()
    # the last plan (warm-started, zero padded to H) still reaches the goal with its untaken tail
    plan = mpc.last_result.actions
    assert plan.shape == (2, 4, 3)
    torch.testing.assert_close(s + plan[:, 2:].sum(dim=1), goal, atol=0.1, rtol=0)


def test_make_planner_builds_each_kind_from_config():
    wm = IntegratorWM(3)
    for name in ("cem", "gd"):
        fn = make_planner(
            load_config(
                [
                    *TINY,
                    f"planner={name}",
                    "planner.horizon=2",
                    "planner.gd.opt_steps=3",
                    "planner.cem.opt_steps=2",
                    "planner.cem.num_samples=8",
                    "planner.cem.topk=2",
                ]
            ),
            wm,
        )
        res = fn(latents(torch.zeros(1, 3)), latents(torch.ones(1, 3)), generator=gens([0]))
        assert res.actions.shape == (1, 2, 3)
    mpc = make_planner(load_config([*TINY, "planner=mpc_gd"]).planner, wm, horizon=3)
    assert isinstance(mpc, MPCPlanner) and mpc.horizon == 3 and mpc.n_taken_actions == 1


def test_action_bounds_and_zero_action_from_env_units():
    norm = Normalizer(action_mean=[1.0, 0.0], action_std=[2.0, 0.5], proprio_mean=[0.0], proprio_std=[1.0])
    b = ActionBounds.from_env([-1.0, -1.0], [1.0, 1.0], norm, frameskip=3)
    torch.testing.assert_close(b.low, torch.tensor([-1.0, -2.0] * 3))
    torch.testing.assert_close(b.high, torch.tensor([0.0, 2.0] * 3))
    torch.testing.assert_close(normalized_zero_action(norm, 2, 3), torch.tensor([-0.5, 0.0] * 3))

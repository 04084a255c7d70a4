"""Discrete CEM through the planner interface: solves a grid walk, factorised over frameskip sub-steps, batched ==
per-episode, MPC warm starts, a real tiny four_rooms model, and config errors that name the key."""

from __future__ import annotations

import pytest
import torch

from dinowm_core import build_world_model, load_config
from dinowm_core.config import CEMConfig, PlannerConfig
from dinowm_core.data.normalization import Normalizer
from dinowm_core.planning import PlanProblem, Rollout, cem_discrete, make_planner
from dinowm_core.planning.common import discrete_action_set
from tests.planning.plan_helpers import gens, tiny_obs

K = 3  # left, right, forward
DIRS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


class GridWalkWM:
    """Analytic world model of an open grid: proprio latent [x, y, dir]; a model step's action is ``f``
    concatenated one-hots (turn left / turn right / forward), applied in order; visual latent = [x, y]."""

    def __init__(self, frameskip: int) -> None:
        self.f = frameskip
        self.action_encoder = type("Enc", (), {"in_dim": frameskip * K})()

    def rollout(self, obs0, act, *, z_obs0):
        s = z_obs0["proprio"][:, -1].clone()  # (B, 3)
        out = [s]
        for t in range(act.shape[1]):
            s = s.clone()
            for j in range(self.f):
                a = act[:, t, j * K : (j + 1) * K].argmax(-1)
                d = s[:, 2].long()
                d = torch.where(a == 0, (d - 1) % 4, torch.where(a == 1, (d + 1) % 4, d))
                s[:, :2] += (a == 2)[:, None] * DIRS[d]
                s[:, 2] = d.float()
            out.append(s)
        p = torch.stack(out, 1)  # (B, H+1, 3)
        z = {"visual": p[:, :, None, :2], "proprio": p}
        return z, z["visual"]


def latents(states: list[list[float]]) -> dict[str, torch.Tensor]:
    p = torch.tensor(states, dtype=torch.float32)[:, None]  # (B, 1, 3)
    return {"visual": p[:, :, None, :2].clone(), "proprio": p.clone()}


def planner_cfg(name: str = "cem_discrete", horizon: int = 2, n_taken: int = 1, **cem) -> PlannerConfig:
    fields = {"num_samples": 200, "topk": 20, "opt_steps": 6, **cem}
    return PlannerConfig(
        name=name, horizon=horizon, cem=CEMConfig(**fields), mpc={"n_taken_actions": n_taken},
        objective={"mode": "last", "alpha": 0.0},
    )  # fmt: skip


def walk(states, actions, f):
    wm = GridWalkWM(f)
    z, _ = wm.rollout(None, actions, z_obs0=latents(states))
    return z["proprio"][:, -1]


def test_discrete_cem_finds_a_sequence_that_reaches_the_goal():
    # From (0, 0) facing +x, reach (2, 1) in 2 model steps of 3 env steps: forward, forward, right, forward and
    # two moves that cancel (e.g. left + right): a few of the 3^6 = 729 sequences, found by sampling sub-steps.
    wm = GridWalkWM(3)
    planner = make_planner(
        planner_cfg(), wm, action_set=discrete_action_set(Normalizer.identity(1, 3, num_actions=3))
    )
    z0, zg = latents([[0, 0, 0], [5, 5, 1]]), latents([[2, 1, 0], [5, 3, 0]])
    result, _ = planner.plan(z0, zg, planner.init_state(2, [0, 1]))
    assert result.actions.shape == (2, 2, 9)
    blocks = result.actions.reshape(2, 2, 3, K)
    assert torch.equal(blocks.sum(-1), torch.ones(2, 2, 3)) and set(blocks.unique().tolist()) == {0.0, 1.0}
    final = walk([[0, 0, 0], [5, 5, 1]], result.actions, 3)
    torch.testing.assert_close(final[:, :2], torch.tensor([[2.0, 1.0], [5.0, 3.0]]))
    assert torch.equal(result.loss, torch.zeros(2))
    assert result.info["indices"].shape == (2, 6) and result.info["probs"].shape == (2, 6, K)


def test_batched_plan_equals_per_episode_plans():
    wm = GridWalkWM(2)
    cfg, aset = planner_cfg(num_samples=30, topk=5, opt_steps=3), torch.eye(K)
    starts, goals = [[0, 0, 0], [1, 2, 3], [4, 0, 2]], [[1, 1, 0], [0, 0, 0], [2, 1, 1]]
    planner = make_planner(cfg, wm, action_set=aset)
    batched, _ = planner.plan(latents(starts), latents(goals), planner.init_state(3, [7, 8, 9]))
    for b in range(3):
        one, _ = planner.plan(latents([starts[b]]), latents([goals[b]]), planner.init_state(1, [7 + b]))
        assert torch.equal(one.actions[0], batched.actions[b])
        assert torch.equal(one.loss[0], batched.loss[b])


def test_mpc_discrete_executes_the_head_and_warm_starts_from_the_tail():
    wm = GridWalkWM(1)
    planner = make_planner(planner_cfg("mpc_cem_discrete", horizon=4, n_taken=1), wm, action_set=torch.eye(K))
    assert planner.closed_loop and planner.n_execute == 1
    state = planner.init_state(1, [0])
    pos, goal = [[0.0, 0.0, 0.0]], latents([[2, 0, 0]])
    for _ in range(3):
        result, state = planner.plan(latents(pos), goal, state)
        assert result.execute.shape == (1, 1, K) and state.warm_start.shape == (1, 3, K)
        pos = walk(pos, result.execute, 1).tolist()
    assert pos[0][:2] == [2.0, 0.0]
    # A warm start puts half of each step's probability on its action: sample 0 (the mode) is the warm start.
    z0 = latents([[0, 0, 0]])
    prob = PlanProblem(wm, Rollout(wm), z0, goal, 2, planner.cfg.objective)
    init = torch.eye(K)[[1, 0]][None]  # right, left
    res = cem_discrete(
        prob, CEMConfig(num_samples=1, topk=1, opt_steps=1), torch.eye(K), init=init, generator=gens([0])
    )
    assert torch.equal(res.actions, init)


def test_tiny_four_rooms_model_plans_one_hot_actions():
    cfg = load_config(["env=four_rooms", "encoder=dino_tiny", "encoder.pretrained=false", "predictor=vit_small",
                       "decoder=none", "img_size=32", "frameskip=2", "num_hist=1", "planner=mpc_cem_discrete",
                       "planner.horizon=2", "planner.cem.num_samples=8", "planner.cem.topk=2",
                       "planner.cem.opt_steps=2"])  # fmt: skip
    torch.manual_seed(0)
    wm = build_world_model(cfg).eval()
    assert wm.action_encoder.in_dim == 6
    norm = Normalizer.identity(1, 3, num_actions=3)
    planner = make_planner(cfg.planner, wm, action_set=discrete_action_set(norm))
    z0 = wm.encode_obs(tiny_obs(cfg, 2))
    zg = wm.encode_obs(tiny_obs(cfg, 2, seed=1))
    result, state = planner.plan(z0, zg, planner.init_state(2, [0, 1]))
    assert result.execute.shape == (2, 1, 6)
    env_actions = norm.denormalize_actions(result.execute.reshape(2, 2, 3))  # (B, f, 1) indices
    assert env_actions.shape == (2, 2, 1) and set(env_actions.unique().tolist()) <= {0.0, 1.0, 2.0}
    assert torch.equal(norm.normalize_actions(env_actions).reshape(2, 1, 6), result.execute)


def test_config_errors_name_the_key():
    from dinowm_core.evaluation.adapter import ModelAdapter
    from dinowm_core.evaluation.policy import build_policy

    wall = load_config(["env=wall", "encoder=dino_tiny", "encoder.pretrained=false", "predictor=vit_small",
                        "decoder=none", "img_size=32", "frameskip=1", "num_hist=1", "planner=mpc_cem_discrete"])  # fmt: skip
    with pytest.raises(ValueError, match="planner.name=mpc_cem_discrete.*env.num_actions"):
        build_policy(wall, adapter=ModelAdapter(build_world_model(wall)))
    with pytest.raises(ValueError, match="env.action_dim"):
        load_config(["env=four_rooms", "env.action_dim=2"])
    with pytest.raises(ValueError, match="action_set"):
        make_planner(planner_cfg(), GridWalkWM(1))
    wm = GridWalkWM(2)
    prob = PlanProblem(
        wm, Rollout(wm), latents([[0, 0, 0]]), latents([[1, 0, 0]]), 2, planner_cfg().objective
    )
    with pytest.raises(ValueError, match="does not divide"):
        cem_discrete(prob, CEMConfig(num_samples=4, topk=2), torch.eye(4))
    with pytest.raises(ValueError, match="topk"):
        cem_discrete(prob, CEMConfig(num_samples=4, topk=5), torch.eye(K))
    cfg = load_config(["env=four_rooms", "img_size=64", "frameskip=3"])
    assert cfg.action_dim == 9 and cfg.env.model_action_dim == 3


def test_random_baseline_draws_action_indices():
    from dinowm_core.evaluation.episodes import EpisodeGroup
    from dinowm_core.evaluation.policy import build_policy

    cfg = load_config(["env=four_rooms", "img_size=32", "frameskip=2", "eval.policy=random", "planner=mpc_cem_discrete",
                       "planner.mpc.n_taken_actions=2"])  # fmt: skip
    group = EpisodeGroup("four_rooms", 1, img_size=32, budget=8, frameskip=2)
    policy = build_policy(cfg, adapter=None, action_box=group.action_box())
    policy.reset([0, 1], seed=0)
    actions = policy.plan({"visual": None}, {})
    assert actions.shape == (2, 4, 1) and set(actions.ravel().tolist()) <= {0.0, 1.0, 2.0}
    assert len(set(actions.ravel().tolist())) > 1

"""Memory-Maze (optional extra): layouts, exact reset-to-state, replay, success, gym API, resumable generation,
one-hot training windows and discrete CEM on its data.

Tests that build the env skip when the extra is not installed; the missing-extra error is tested either way.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dinowm_core.data.policies import ExplorePolicy
from dinowm_core.envs import memory_maze as mm
from dinowm_core.envs.base import make_env

SKIP_REASON = "memory_maze extra not installed: pip install -e '.[memory_maze]'"


@pytest.fixture(scope="module")
def env() -> Iterator[mm.MemoryMazeEnv]:
    pytest.importorskip("memory_maze", reason=SKIP_REASON)
    env = mm.MemoryMazeEnv(img_size=64, layout="3x7")
    yield env
    env.close()


@pytest.fixture(scope="module")
def env_9x9() -> Iterator[mm.MemoryMazeEnv]:
    pytest.importorskip("memory_maze", reason=SKIP_REASON)
    env = mm.MemoryMazeEnv(img_size=64, layout="9x9")
    yield env
    env.close()


def _actions(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, mm.MemoryMazeEnv.num_actions, (n, 1))


# ---- without the package ---------------------------------------------------------------------------


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("memory_maze", "memory_maze.maze"):
        monkeypatch.setitem(sys.modules, name, None)  # `import memory_maze` now raises ImportError
    import dinowm_core.envs  # noqa: F401  (the registry does not import the package)

    with pytest.raises(
        ImportError, match=re.escape("install the memory_maze extra: pip install -e '.[memory_maze]'")
    ):
        make_env("memory_maze", img_size=64)


def test_fixed_layouts_have_their_stated_size() -> None:
    for name, rows in mm.FIXED_LAYOUTS.items():
        inner = mm.check_layout(rows)
        assert f"{inner[0]}x{inner[1]}" == name
        assert 2 <= "".join(rows).count("G") <= 6 and "P" in "".join(rows)  # the package has 6 target colours
        varied = mm.vary_walls(rows)
        assert [len(r) for r in varied] == [len(r) for r in rows] and "*" not in "".join(varied)


def test_explore_policy_turns_when_blocked() -> None:
    policy = ExplorePolicy(None, np.random.default_rng(0))  # type: ignore[arg-type]
    policy.action, policy.left = ExplorePolicy.FORWARD, 10
    state = np.zeros(11)
    first = policy(state)
    assert first.dtype == np.int64 and first.shape == (1,) and first[0] == ExplorePolicy.FORWARD
    assert policy(state)[0] in (ExplorePolicy.LEFT, ExplorePolicy.RIGHT)  # no progress: a wall


# ---- with the package ------------------------------------------------------------------------------


def test_built_layouts_match_their_strings(env: mm.MemoryMazeEnv) -> None:
    assert env.maze_size == (3, 7) and env.num_targets == 2
    assert env._arena.maze.height == 5 and env._arena.maze.width == 9
    # Targets sit on the layout's G cells, and sampled poses are inside the inner maze.
    g_cells = [(i, j) for i, row in enumerate(mm.FIXED_LAYOUTS["3x7"]) for j, c in enumerate(row) if c == "G"]
    expected = sorted(tuple(env.cell_to_world(i, j)) for i, j in g_cells)
    np.testing.assert_allclose(sorted(map(tuple, env.target_positions)), expected, atol=1e-9)
    for seed in range(20):
        init, _ = env.sample_init_goal(seed)
        x, y = env.world_to_grid(init[:2])
        assert 0 < x < 7 and 0 < y < 3


def test_reset_to_state_reproduces_frame_and_future(env: mm.MemoryMazeEnv) -> None:
    init, _ = env.sample_init_goal(3)
    actions = _actions(3, 12)
    obs, states = env.rollout(init, actions)
    assert states.shape == (13, 11) and obs["visual"].shape == (13, 64, 64, 3)
    assert obs["visual"][0].std() > 5 and not np.array_equal(obs["visual"][0], obs["visual"][-1])
    assert np.abs(states[-1, :2] - states[0, :2]).max() > 0.1  # the agent moved
    k = 6
    obs_k, info = env.reset(options={"state": states[k]})
    np.testing.assert_array_equal(info["state"], states[k])
    np.testing.assert_array_equal(obs_k["visual"], obs["visual"][k])
    np.testing.assert_array_equal(obs_k["proprio"], obs["proprio"][k])
    rest, rest_states = env.rollout(states[k], actions[k:])
    np.testing.assert_array_equal(rest_states, states[k:])
    np.testing.assert_array_equal(rest["visual"], obs["visual"][k:])


def test_proprio_is_grid_position_and_heading(env: mm.MemoryMazeEnv) -> None:
    state = np.zeros(11)
    state[:2] = env.cell_to_world(2, 1)  # row 2 of 5 (middle), column 1: inner cell (0, 1) from bottom-left
    state[3] = -np.pi / 2
    obs, _ = env.reset(options={"state": state})
    np.testing.assert_allclose(obs["proprio"], [0.5, 1.5, 0.0, 1.0], atol=1e-6)
    # The heading is the walker's forward axis: "forward" moves the agent along it.
    _, _, _, _, info = env.step(np.array([1]))
    moved = info["state"][:2] - state[:2]
    assert moved[1] > 0.1 and abs(moved[0]) < 0.05


def test_plain_reset_is_deterministic_under_seed(env_9x9: mm.MemoryMazeEnv) -> None:
    # Each new maze recompiles the scene (~1 s): this test builds three.
    obs_a, info_a = env_9x9.reset(seed=5)
    params = env_9x9.env_params
    assert set(params) == {"maze_seed"}
    actions = _actions(5, 4)
    a_obs, a_states = env_9x9.rollout(info_a["state"], actions)
    env_9x9.reset(seed=6)
    assert env_9x9.env_params != params  # a new maze per plain reset
    # A recorded (maze, state) pair replays from another maze: the maze is rebuilt from its seed alone.
    b_obs, b_states = env_9x9.rollout(info_a["state"], actions, env_params=params)
    np.testing.assert_array_equal(b_states, a_states)
    np.testing.assert_array_equal(b_obs["visual"], a_obs["visual"])
    obs_b, info_b = env_9x9.reset(seed=5)  # same seed: same maze, same start
    assert env_9x9.env_params == params
    np.testing.assert_array_equal(info_a["state"], info_b["state"])
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])


def test_success_is_within_half_a_cell_of_the_goal(env: mm.MemoryMazeEnv) -> None:
    init, goal = env.sample_init_goal(11)
    init_again, goal_again = env.sample_init_goal(11)
    np.testing.assert_array_equal(init, init_again)
    np.testing.assert_array_equal(goal, goal_again)
    target = int(goal[mm.TARGET_INDEX])
    np.testing.assert_array_equal(goal[:2], env.target_positions[target])  # the goal is the current target
    assert not env.eval_state(goal, init)["success"]
    near, far = goal.copy(), goal.copy()
    near[0] += 0.45 * mm.XY_SCALE  # 0.45 cells
    far[0] += 0.55 * mm.XY_SCALE
    assert env.eval_state(goal, near)["success"] and not env.eval_state(goal, far)["success"]
    assert env.eval_state(goal, near)["distance"] == pytest.approx(0.45)
    # Standing on the current target touches it: the task rewards it and picks another target.
    env.reset(options={"state": goal})
    _, reward, _, _, info = env.step(np.array([0]))
    assert reward == 1.0 and info["target_reached"] and info["target_index"] != target


def test_fast_target_touch_matches_the_package(env: mm.MemoryMazeEnv) -> None:
    from dm_control.locomotion.props.target_sphere import TargetSphere

    init, goal = env.sample_init_goal(11)
    physics = env.physics
    seen = []
    for state in (init, goal):
        env.reset(options={"state": state})  # mj_forward: the contacts of this pose
        for target in env._task._targets:
            flags = []
            for update in (type(target)._update_activation, TargetSphere._update_activation):
                target.reset(physics)
                update(target, physics)
                flags.append(target.activated)
            assert flags[0] == flags[1]
            seen.append(flags[0])
        env._task._targets[0].reset(physics)
    assert any(seen) and not all(seen)  # the goal pose touches its target, the start pose none


def test_gymnasium_env_checker_passes(env: mm.MemoryMazeEnv) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # base.py's proprio Box is unbounded on purpose; the checker only warns about it.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is")
        check_env(env, skip_render_check=True)


def test_bad_actions_and_params_are_refused(env: mm.MemoryMazeEnv) -> None:
    env.reset(seed=0)
    for bad in (6, -1, 1.5, [1, 2]):
        with pytest.raises(ValueError, match="one integer in"):
            env.step(bad)
    with pytest.raises(ValueError, match="unknown env params"):
        env.reset(options={"env_params": {"maze_seed": 3}})  # fixed layouts have no maze seed
    with pytest.raises(ValueError, match="unknown layout"):
        mm.MemoryMazeEnv(layout="5x5")


def test_generation_stores_int_actions_and_resumes_per_episode(tmp_path: Path) -> None:
    pytest.importorskip("memory_maze", reason=SKIP_REASON)
    from dinowm_core.data.generate import generate, partial_dir
    from dinowm_core.data.store import TrajectoryStore

    out = tmp_path / "mm"
    kwargs = dict(
        seed=0, workers=1, img_size=64, policy="explore", env_kwargs={"layout": "3x7"}, progress=False
    )
    assert generate("memory_maze", 2, 4, out, max_shards=1, **kwargs) is None  # interrupted after one episode
    first = partial_dir(out) / "shard-00000.arrow"
    stamp = first.stat().st_mtime_ns
    assert not (partial_dir(out) / "shard-00001.arrow").exists()
    assert generate("memory_maze", 2, 4, out, **kwargs) == out
    assert (
        out / "shard-00000.arrow"
    ).stat().st_mtime_ns == stamp  # the finished episode was kept, not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spaces"]["action"] == {"shape": [1], "dtype": "int64", "num_actions": 6}
    assert manifest["env"]["kwargs"] == {"layout": "3x7"}
    store = TrajectoryStore(out)
    assert store.num_episodes == 2 and not store.verify()
    actions = store.actions(1)
    assert actions.dtype == np.int64 and actions.shape == (4, 1) and ((actions >= 0) & (actions < 6)).all()
    assert store.env_params(1) == {}


def test_dataset_trains_on_one_hots_and_discrete_cem_plans(tmp_path: Path, env: mm.MemoryMazeEnv) -> None:
    # The env presets set num_actions 6: windows one-hot the stored indices (frameskip concatenates them), a
    # training step runs, and the plan preset's discrete MPC-CEM returns one-hot rows whose indices the env takes.
    import torch

    from dinowm_core import load_config
    from dinowm_core.data.generate import generate
    from dinowm_core.data.normalization import Normalizer
    from dinowm_core.data.store import TrajectoryStore
    from dinowm_core.data.windows import build_datasets
    from dinowm_core.planning import make_planner
    from dinowm_core.planning.common import discrete_action_set
    from dinowm_core.presets import plan_config
    from dinowm_core.training.checkpoint import load_config_from_checkpoint, load_world_model
    from dinowm_core.training.hooks import TrainHooks
    from dinowm_core.training.loop import fit

    data = generate("memory_maze", 4, 5, tmp_path / "data", img_size=64, env_kwargs={"layout": "3x7"},
                    progress=False)  # fmt: skip
    cfg = load_config(["env=memory_maze_3x7", "encoder=dino_tiny", "encoder.pretrained=false",
                       "predictor=vit_small", "decoder=none", "img_size=32", "data.allow_resize=true", "frameskip=2",
                       "num_hist=1",
                       f"data.path={data}", "data.num_workers=0", "training.batch_size=2", "training.max_steps=1",
                       "training.num_val_rollouts=1", "training.val_max_batches=1",
                       "training.num_reconstruct_samples=0", "training.amp=off", f"output_dir={tmp_path}"])  # fmt: skip
    obs, act, _ = build_datasets(cfg)[0][0]
    blocks = act.reshape(2, 2, 6)  # (frames, frameskip, one-hot)
    assert torch.equal(blocks.sum(-1), torch.ones(2, 2)) and set(blocks.unique().tolist()) <= {0.0, 1.0}

    torch.manual_seed(0)
    run = fit(cfg, TrainHooks(device="cpu", run_dir=tmp_path / "run"))
    assert run.steps == 1 and run.checkpoint is not None
    wm = load_world_model(run.checkpoint).eval()
    assert wm.action_encoder.in_dim == 12  # frameskip 2 x one-hot 6
    plan_cfg = plan_config(load_config_from_checkpoint(run.checkpoint), [
        "planner.horizon=2", "planner.mpc.n_taken_actions=1", "planner.cem.num_samples=8", "planner.cem.topk=2",
        "planner.cem.opt_steps=2",
    ])  # fmt: skip
    assert plan_cfg.planner.name == "mpc_cem_discrete"  # from conf/plan/memory_maze.yaml
    norm = Normalizer.from_manifest(TrajectoryStore(data).manifest)
    planner = make_planner(plan_cfg.planner, wm, action_set=discrete_action_set(norm))
    with torch.inference_mode():
        z0 = wm.encode_obs({k: v[None, :1] for k, v in obs.items()})
        zg = wm.encode_obs({k: v[None, 1:] for k, v in obs.items()})
        result, _ = planner.plan(z0, zg, planner.init_state(1, [0]))
    assert result.execute.shape[-1] == 12
    indices = norm.denormalize_actions(result.execute.reshape(-1, 6))  # (steps, 1)
    assert set(indices.unique().tolist()) <= set(range(6))
    env.reset(seed=0)
    for a in indices.numpy():
        env.step(a)

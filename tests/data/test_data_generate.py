"""Generation: determinism across worker counts, resume after interruption, policies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dinowm_core.data.generate import GenerationSpec, episode_seeds, generate, partial_dir
from dinowm_core.data.policies import NoisyGoalPolicy, PushTPolicy, RandomPolicy, make_policy
from dinowm_core.data.store import TrajectoryStore

FAKE = "data_fake_envs:FakeDotEnv"


def _gen(out, workers=1, **kw):
    args = {"episodes": 6, "steps": 12, "seed": 7, "img_size": 16, "episodes_per_shard": 2, "env_factory": FAKE,
            **kw}  # fmt: skip
    return generate("wall", args.pop("episodes"), args.pop("steps"), out, workers=workers, progress=False,
                    **args)  # fmt: skip


def _checksums(path):
    return {k: v["sha256"] for k, v in json.loads((path / "manifest.json").read_text())["files"].items()}


def test_same_dataset_for_one_and_two_workers(tmp_path):
    a = _gen(tmp_path / "a", workers=1)
    b = _gen(tmp_path / "b", workers=2)
    assert _checksums(a) == _checksums(b)
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()
    store = TrajectoryStore(a)
    assert store.num_episodes == 6 and store.episode_length(0) == 12
    assert store.manifest["generator"]["policy"] == "random" and store.manifest["generator"]["seed"] == 7
    assert store.env_params(0) == {"stripe": 3}
    # episodes differ from each other, and a different seed gives different data
    assert not np.array_equal(store.states(0), store.states(1))
    c = _gen(tmp_path / "c", seed=8)
    assert _checksums(c) != _checksums(a)


def test_stored_transitions_follow_the_env(tmp_path):
    store = TrajectoryStore(_gen(tmp_path / "a", episodes=2))
    s, a = store.states(1), store.actions(1)
    # action[t] is applied at frame t: state[t+1] = clip(state[t] + 0.1 * action[t])
    np.testing.assert_allclose(s[1:], np.clip(s[:-1] + 0.1 * a[:-1].astype(np.float64), 0, 1), atol=1e-6)
    np.testing.assert_allclose(store.proprio(1), s, atol=1e-6)
    frames = store.frames(1, np.arange(12))
    assert frames.std() > 0 and not np.array_equal(frames[0], frames[5])


def test_interrupted_generation_resumes_and_completes(tmp_path):
    full = _gen(tmp_path / "full")
    out = tmp_path / "resumed"
    assert _gen(out, max_shards=1) is None  # "killed" after one of three shards
    assert not out.exists()
    part = partial_dir(out)
    assert (part / "shard-00000.json").is_file() and not (part / "shard-00001.arrow").exists()
    first_mtime = (part / "shard-00000.arrow").stat().st_mtime_ns
    # A shard killed mid-write leaves a .tmp file and no sidecar: it is redone.
    (part / "shard-00001.arrow.tmp").write_bytes(b"partial garbage")
    assert _gen(out, workers=2) == out
    assert not part.exists()
    assert _checksums(out) == _checksums(full)
    assert not list(out.glob("*.tmp"))  # the half-written shard was replaced
    assert set(_checksums(out)) == {
        "episodes.arrow",
        "shard-00000.arrow",
        "shard-00001.arrow",
        "shard-00002.arrow",
    }
    assert (out / "shard-00000.arrow").stat().st_mtime_ns == first_mtime  # finished shard was kept


def test_resume_redoes_a_corrupted_shard_and_refuses_other_params(tmp_path):
    full = _gen(tmp_path / "full")
    out = tmp_path / "x"
    _gen(out, max_shards=2)
    shard = partial_dir(out) / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="different seed"):
        _gen(out, seed=8)
    _gen(out)
    assert _checksums(out) == _checksums(full)


def test_existing_output_is_refused(tmp_path):
    out = _gen(tmp_path / "a", episodes=1)
    with pytest.raises(FileExistsError):
        _gen(out, episodes=1)


def test_episode_seeds_depend_only_on_seed_and_index():
    s1, r1 = episode_seeds(0, 5)
    s2, r2 = episode_seeds(0, 5)
    assert s1 == s2 and r1.random() == r2.random()
    assert episode_seeds(0, 6)[0] != s1 and episode_seeds(1, 5)[0] != s1


def test_shard_layout_does_not_depend_on_workers():
    spec = GenerationSpec("wall", 1000, 10)
    assert spec.episodes_per_shard == 32 and spec.num_shards == 32
    assert list(spec.shard_episodes(31)) == list(range(992, 1000))


def test_policies_respect_bounds_and_goals():
    from data_fake_envs import FakeDotEnv

    env = FakeDotEnv(img_size=8)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = np.array([RandomPolicy(env, rng)(env.get_state()) for _ in range(500)])
    assert acts.min() >= -1 and acts.max() <= 1 and acts.std() > 0.5
    pol = NoisyGoalPolicy(env, np.random.default_rng(1), noise=0.05)
    state = env.get_state()
    pol(state)
    dist0 = np.linalg.norm(pol.goal - state)
    goal = pol.goal.copy()
    for _ in range(10):
        _, _, _, _, info = env.step(pol(env.get_state()))
        if not np.array_equal(pol.goal, goal):
            break
    assert np.linalg.norm(goal - env.get_state()) < dist0  # it moves toward its goal
    with pytest.raises(ValueError, match="supports envs pusht"):
        make_policy("pusht_push", env, rng)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", env, rng)


def test_policy_mixture_rolls_one_part_per_episode_and_its_goal_half_crosses_the_wall(tmp_path):
    """``random+noisy_goal``: each episode is one of the two, drawn from the episode's seed; on Wall the random
    episodes stay on their side (uniform random actions barely drift), the goal-driven ones go through the door."""
    from dinowm_core.envs.wall import DEFAULT_WALL_X, WALL_HALF_WIDTH

    def crossings(out):
        store = TrajectoryStore(out)
        xs = [store.states(i)[:, 0] for i in range(store.num_episodes)]
        lo, hi = DEFAULT_WALL_X - WALL_HALF_WIDTH, DEFAULT_WALL_X + WALL_HALF_WIDTH
        return sum(bool(x.min() < lo and x.max() > hi) for x in xs), store

    kw = {"steps": 50, "img_size": 16, "workers": 1, "progress": False, "episodes_per_shard": 40}
    n_random, _ = crossings(generate("wall", 40, out=tmp_path / "random", policy="random", **kw))
    n_mixed, mixed = crossings(generate("wall", 40, out=tmp_path / "mixed", policy="random+noisy_goal", **kw))
    assert n_random <= 1 and 10 <= n_mixed <= 30
    assert mixed.manifest["generator"]["policy"] == "random+noisy_goal"
    again = generate("wall", 40, out=tmp_path / "again", policy="random+noisy_goal", **kw)
    assert _checksums(again) == _checksums(tmp_path / "mixed")  # the draw is part of the episode's seed
    # which part each episode rolled: the goal-driven one saturates its actions, the random one rarely does
    saturated = [np.mean(np.abs(mixed.actions(i)) > 0.99) for i in range(40)]
    assert 10 <= sum(f > 0.3 for f in saturated) <= 30


def test_policy_mixture_names_are_checked_part_by_part():
    from data_fake_envs import FakeDotEnv

    env, rng = FakeDotEnv(img_size=8), np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("random+nope", env, rng)
    with pytest.raises(ValueError, match="supports envs pusht"):
        make_policy("random+pusht_push", env, rng)
    for bad in ("random+random", "random+", "+noisy_goal", "random:0+noisy_goal", "random:x+noisy_goal"):
        with pytest.raises(ValueError, match="name each policy once"):
            make_policy(bad, env, rng)


def test_policy_mixture_weights_set_how_often_each_part_is_rolled():
    from dinowm_core.data.policies import policy_parts

    assert policy_parts("random") == [("random", 1.0)]
    assert policy_parts("random:3+noisy_goal") == [("random", 0.75), ("noisy_goal", 0.25)]
    from data_fake_envs import FakeDotEnv

    env = FakeDotEnv(img_size=8)
    env.reset(seed=0)
    rolled = [make_policy("random:3+noisy_goal:1", env, np.random.default_rng(i)) for i in range(400)]
    kinds = [type(p).__name__ for p in rolled]
    assert set(kinds) == {"RandomPolicy", "NoisyGoalPolicy"}
    assert 0.65 < kinds.count("RandomPolicy") / 400 < 0.85


def test_sticky_random_holds_each_action_for_several_steps_and_runs_into_walls():
    from dinowm_core.data.policies import StickyRandomPolicy
    from dinowm_core.envs.wall import WallEnv

    env = WallEnv(img_size=16)
    pol = StickyRandomPolicy(env, np.random.default_rng(1))
    acts = np.array([pol(np.zeros(2)) for _ in range(400)])
    changes = int((np.abs(np.diff(acts, axis=0)).sum(1) > 0).sum())
    assert acts.min() >= -1 and acts.max() <= 1 and 25 < changes < 80  # held for ~8 steps on average

    def blocked(policy):  # steps where a wall stopped the dot short of its move
        n = 0
        for e in range(20):
            _, info = env.reset(seed=e)
            pol = make_policy(policy, env, np.random.default_rng(e))
            for _ in range(50):
                state = np.asarray(info["state"], float)
                a = pol(state)
                _, _, _, _, info = env.step(a)
                n += np.linalg.norm(np.asarray(info["state"]) - state - 2 * a) > 0.3
        return n

    # on Wall it runs into the walls far more often than independent random actions do
    assert blocked("sticky_random") > 5 * max(blocked("random"), 1)


def test_pusht_policy_gets_behind_the_block_and_pushes():
    class _Env:
        env_name = "pusht"

    pol = PushTPolicy(_Env(), np.random.default_rng(0), noise=0.0)
    agent, block = np.array([100.0, 100.0]), np.array([256.0, 256.0])
    for _ in range(40):  # kinematic agent; the block moves with the agent when pushed in contact
        a = pol(np.array([*agent, *block, 0.0, 0.0, 0.0])) * PushTPolicy.PIXELS_PER_UNIT  # env units -> px
        assert np.linalg.norm(a) <= 60.0 + 1e-9
        new = agent + a
        if np.linalg.norm(new - block) < 30.0:
            block = block + (new - agent)
        agent = new
    assert np.linalg.norm(block - 256.0) > 20.0  # the block was pushed


def test_generation_caps_blas_threads_in_process_and_in_workers(tmp_path):
    """Oversubscribed OpenBLAS made Wall's resets 20-50x slower in the one-worker (in-process) path."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(p["user_api"] == "blas" for p in threadpoolctl.threadpool_info()):
        pytest.skip("no BLAS library loaded")
    for workers in (1, 2):
        out = _gen(tmp_path / f"w{workers}", workers=workers, env_factory="data_fake_envs:ThreadProbeEnv")
        store = TrajectoryStore(out)
        assert {store.env_params(i)["blas_threads"] for i in range(store.num_episodes)} == {1}
    default = max(p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")
    from data_fake_envs import ThreadProbeEnv

    env = ThreadProbeEnv()
    env.reset(seed=0)
    assert env.blas_threads == default  # the cap is lifted once generation returns


def test_simulator_crash_mid_shard_keeps_finished_shards_and_resumes(tmp_path):
    import dinowm_core.data.generate as gen

    full = _gen(tmp_path / "full")
    out = tmp_path / "x"
    kwargs = {"env_factory": "data_fake_envs:FailingEnv", "env_kwargs": {"fail_at": 4}}
    gen._ENV_CACHE.clear()
    try:
        # The 4th reset is episode 3, the second episode of shard 1: shard 1 was being written when it crashed.
        with pytest.raises(RuntimeError, match="simulator crashed at reset 4"):
            _gen(out, **kwargs)
        part = partial_dir(out)
        assert sorted(f.name for f in part.iterdir()) == [
            "generation.json",
            "shard-00000.arrow",
            "shard-00000.json",
        ]
        # The rerun reuses this process's env (past its failing reset) and finishes the same data.
        assert _gen(out, **kwargs) == out
    finally:
        gen._ENV_CACHE.clear()
    shards = {k: v for k, v in _checksums(out).items() if k.startswith("shard-")}
    assert shards == {k: v for k, v in _checksums(full).items() if k.startswith("shard-")}


def test_policy_that_does_not_suit_the_env_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="policy 'pusht_push' supports envs pusht, not 'wall'.*random"):
        _gen(tmp_path / "x", policy="pusht_push")
    assert not list(tmp_path.iterdir())


def test_rerun_with_other_arguments_replaces_a_partial_without_finished_shards(tmp_path):
    import dinowm_core.data.generate as gen

    out = tmp_path / "x"
    gen._ENV_CACHE.clear()
    try:
        with pytest.raises(RuntimeError, match="simulator crashed at reset 1"):
            _gen(out, env_factory="data_fake_envs:FailingEnv", env_kwargs={"fail_at": 1})
    finally:
        gen._ENV_CACHE.clear()
    assert partial_dir(out).is_dir()  # generation.json only: no finished shard
    assert _gen(out, seed=8) == out and not partial_dir(out).exists()
    assert _checksums(out) == _checksums(_gen(tmp_path / "fresh", seed=8))


def test_rerun_with_other_arguments_keeps_finished_shards_and_names_the_directory(tmp_path):
    out = tmp_path / "x"
    _gen(out, max_shards=1)
    part = partial_dir(out)
    with pytest.raises(ValueError, match="holds 1 finished shard.*different seed") as e:
        _gen(out, seed=8)
    assert f"delete the directory ({part})" in str(e.value)
    assert (part / "shard-00000.arrow").is_file() and (part / "shard-00000.json").is_file()

"""Planning targets: where each evaluation episode starts and what it must reach (reference section 5.2).

A :class:`Target` is plain data (states, env params, the goal frame) so it can be shipped to an env actor
and written to / read from a file. Goal sources:

* ``random_state``: ``env.sample_init_goal(seed)`` (Wall, PointMaze), goal frame rendered at the goal state.
  With a dataset, each episode first takes the env params (e.g. Wall's ``wall_x`` / ``door_y``) of a val
  trajectory picked by its episode seed, as the reference's ``update_env``; without one, the default layout;
* ``dset``: a segment of a held-out (val) trajectory; its recorded env actions for ``frameskip * goal_H``
  steps are *replayed in the env* from the segment's first state with the trajectory's env params, and
  ``obs_g`` / ``state_g`` are the replay's last frame / state (not the dataset's images);
* ``random_action``: like ``dset``, but replaying ``N(0, 1)`` normalized actions, denormalized;
* ``file``: JSON (or ``.npz``) with init/goal states and env params -- never a pickle (loading one runs code).

Determinism: episode ``n`` of eval seed ``s`` gets one ``episode_seed`` that drives the env reset,
``sample_init_goal`` and its own NumPy generator, so a target depends only on ``(source, s, n)`` and not on
how many episodes are drawn. Two schemes (:func:`episode_seeds`):

* ``reference``: ``s * n + 1`` (reference ``PlanWorkspace``; 99 -> 1, 100, 199, ...). With it seed 0 makes
  every episode identical and seeds 1 and 2 share half their episodes, so it is only for parity runs;
* ``spawn`` (default): ``SeedSequence([s, n])`` -> 31-bit seed: distinct episodes, independent seeds.

Deviation: the reference picks dset segments with the global Python ``random`` state; we draw them from the
per-episode generator.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dinowm_core.data.normalization import Normalizer
    from dinowm_core.data.store import TrajectoryStore
    from dinowm_core.envs.base import PlanningEnv

log = logging.getLogger(__name__)

GOAL_SOURCES = ("dset", "random_state", "random_action", "file")


@dataclass
class Target:
    """One episode's start and goal. ``goal_obs`` is the env's own frame/proprio at the goal."""

    episode_seed: int
    init_state: np.ndarray
    goal_state: np.ndarray
    env_params: dict[str, Any] = field(default_factory=dict)
    goal_obs: dict[str, np.ndarray] = field(default_factory=dict)
    #: env-unit actions (frameskip * goal_H, d) that reach the goal (dset / random_action), else None
    gt_actions: np.ndarray | None = None
    #: where it came from, e.g. {"source": "dset", "episode": 12, "start": 7}
    origin: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable states and params (frames are re-rendered on load)."""
        out = {
            "episode_seed": int(self.episode_seed),
            "init_state": np.asarray(self.init_state, np.float64).tolist(),
            "goal_state": np.asarray(self.goal_state, np.float64).tolist(),
            "env_params": self.env_params,
            "origin": self.origin,
        }
        if self.gt_actions is not None:
            out["gt_actions"] = np.asarray(self.gt_actions, np.float64).tolist()
        return out


SEED_SCHEMES = ("spawn", "reference")


def episode_seeds(seed: int, n_evals: int, scheme: str = "spawn") -> list[int]:
    """The episode seeds of eval seed ``seed`` (see the module docstring for the two schemes)."""
    if scheme == "reference":
        return [seed * n + 1 for n in range(n_evals)]
    if scheme == "spawn":
        return [int(np.random.SeedSequence([seed, n]).generate_state(1)[0] >> 1) for n in range(n_evals)]
    raise ValueError(f"unknown seed scheme {scheme!r} (choices: {', '.join(SEED_SCHEMES)})")


def render_goal(
    env: PlanningEnv, state: np.ndarray, env_params: dict[str, Any], seed: int
) -> dict[str, np.ndarray]:
    """The env's observation at ``state`` (obs_g for state-defined goals)."""
    obs, _ = env.reset(seed=seed, options={"state": state, "env_params": env_params})
    return {"visual": obs["visual"].copy(), "proprio": obs["proprio"].copy()}


def replay_target(
    env: PlanningEnv,
    init_state: np.ndarray,
    actions: np.ndarray,
    env_params: dict[str, Any],
    episode_seed: int,
    origin: dict[str, Any],
) -> Target:
    """Replay env ``actions`` (T, d) from ``init_state``; the goal is the last frame and state."""
    obs, states = env.rollout(init_state, actions, env_params=env_params, seed=episode_seed)
    goal_obs = {"visual": obs["visual"][-1].copy(), "proprio": obs["proprio"][-1].copy()}
    return Target(episode_seed, np.asarray(init_state, np.float64), states[-1], dict(env_params), goal_obs,
                  np.asarray(actions, np.float64), origin)  # fmt: skip


def _segment(
    store: TrajectoryStore, episodes: np.ndarray, length: int, rng: np.random.Generator
) -> tuple[int, int]:
    """(episode, start) of a random segment of ``length`` frames among trajectories long enough for it."""
    lengths = np.asarray([store.episode_length(int(e)) for e in episodes])
    ok = episodes[lengths >= length]
    if len(ok) == 0:
        raise ValueError(
            f"no val trajectory has the {length} frames a goal_H segment needs "
            f"(longest: {lengths.max(initial=0)})"
        )
    ep = int(ok[rng.integers(len(ok))])
    start = int(rng.integers(store.episode_length(ep) - length + 1))
    return ep, start


def dset_target(
    env: PlanningEnv,
    store: TrajectoryStore,
    episodes: np.ndarray,
    *,
    n_steps: int,
    episode_seed: int,
    random_actions: Normalizer | None = None,
) -> Target:
    """A dset target of ``n_steps`` env steps (random_action when ``random_actions`` is the normalizer)."""
    rng = np.random.default_rng(episode_seed)
    ep, start = _segment(store, np.asarray(episodes), n_steps + 1, rng)
    init_state = store.states(ep, start, start + 1)[0]
    actions = store.actions(ep, start, start + n_steps)
    source = "dset"
    if random_actions is not None:
        # (T, model width): a discrete env's random one-hot scores, whose argmax is a uniform random action
        normalized = rng.standard_normal((len(actions), random_actions.model_action_dim))
        actions = np.asarray(random_actions.denormalize_actions(normalized), np.float64)
        source = "random_action"
    origin = {"source": source, "episode": ep, "start": start}
    return replay_target(env, init_state, actions, store.env_params(ep), episode_seed, origin)


def random_state_target(
    env: PlanningEnv, episode_seed: int, env_params: dict[str, Any] | None = None
) -> Target:
    """``env.sample_init_goal(seed)`` in the given (or the env's default) layout."""
    params = dict(env.env_params if env_params is None else env_params)
    env.set_env_params(params)
    init, goal = env.sample_init_goal(episode_seed)
    goal_obs = render_goal(env, goal, params, episode_seed)
    return Target(episode_seed, np.asarray(init, np.float64), np.asarray(goal, np.float64), params, goal_obs,
                  origin={"source": "random_state"})  # fmt: skip


def dataset_layout_target(
    env: PlanningEnv,
    store: TrajectoryStore,
    episodes: np.ndarray,
    episode_seed: int,
    default: dict[str, Any],
) -> Target:
    """A random_state target in the layout of a (seeded) val trajectory (reference 5.2: a length-2 segment
    gives the episode's env_info, ``update_env`` applies it, then init/goal are sampled). Keys the trajectory
    does not record keep ``default``, so no layout leaks from one episode into the next."""
    ep, _ = _segment(store, np.asarray(episodes), 2, np.random.default_rng(episode_seed))
    target = random_state_target(env, episode_seed, {**default, **store.env_params(ep)})
    target.origin["layout_episode"] = ep
    return target


# ---- files ------------------------------------------------------------------------------------------
def save_targets(path: str | Path, targets: list[Target], **meta: Any) -> Path:
    """Write targets as JSON (the safe counterpart of the reference's ``plan_targets.pkl``)."""
    path = Path(path)
    path.write_text(json.dumps({"version": 1, **meta, "targets": [t.to_dict() for t in targets]}, indent=1))
    return path


def _read_target_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        rows = data["targets"] if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected {{'targets': [{{init_state, goal_state, env_params}}, ...]}}")
        return rows
    if path.suffix == ".npz":
        # allow_pickle=False: object arrays (and so any code) are refused; env params travel as JSON text.
        with np.load(path, allow_pickle=False) as z:
            init, goal = np.asarray(z["init_state"], np.float64), np.asarray(z["goal_state"], np.float64)
            params = json.loads(str(z["env_params"])) if "env_params" in z.files else [{}] * len(init)
        if init.shape != goal.shape or init.ndim != 2 or len(params) != len(init):
            raise ValueError(
                f"{path}: init_state/goal_state must be (N, Ds) and env_params a list of N dicts"
            )
        return [
            {"init_state": i, "goal_state": g, "env_params": p}
            for i, g, p in zip(init, goal, params, strict=True)
        ]
    raise ValueError(f"{path}: goal files must be .json or .npz (pickles are refused: loading one runs code)")


def file_targets(env: PlanningEnv, path: str | Path, seeds: list[int]) -> list[Target]:
    """Targets from a file; the goal frame is re-rendered in the env. ``seeds`` are the episode seeds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"goal file {path} does not exist")
    rows = _read_target_file(path)
    if len(rows) < len(seeds):
        raise ValueError(f"{path}: has {len(rows)} targets, {len(seeds)} episodes were asked for")
    targets = []
    for seed, row in zip(seeds, rows, strict=False):
        try:
            init = np.asarray(row["init_state"], np.float64)
            goal = np.asarray(row["goal_state"], np.float64)
        except KeyError as e:
            raise ValueError(f"{path}: a target lacks {e.args[0]!r}") from None
        params = dict(row.get("env_params") or {})
        goal_obs = render_goal(env, goal, params, seed)
        gt = row.get("gt_actions")
        targets.append(Target(seed, init, goal, params, goal_obs, None if gt is None else np.asarray(gt),
                              {"source": "file", "path": str(path)}))  # fmt: skip
    return targets


# ---- entry point ------------------------------------------------------------------------------------
def make_targets(
    env: PlanningEnv,
    source: str,
    seed: int,
    n_evals: int,
    *,
    frameskip: int = 1,
    goal_H: int = 5,
    store: TrajectoryStore | None = None,
    val_episodes: np.ndarray | None = None,
    normalizer: Normalizer | None = None,
    goal_file: str | Path | None = None,
    seed_scheme: str = "spawn",
) -> list[Target]:
    """The ``n_evals`` targets of eval seed ``seed`` (dset sources need ``store`` and ``val_episodes``;
    random_state uses them, when given, for per-episode dataset layouts)."""
    seeds = episode_seeds(seed, n_evals, seed_scheme)
    if source == "random_state":
        default = dict(env.env_params)
        if store is None or val_episodes is None or len(val_episodes) == 0:
            log.info("random_state goals: no dataset, every episode uses the env's default layout %s",
                     default)  # fmt: skip
            return [random_state_target(env, s, default) for s in seeds]
        try:
            return [dataset_layout_target(env, store, val_episodes, s, default) for s in seeds]
        finally:
            env.set_env_params(default)  # the next call starts from the same default layout
    if source in ("dset", "random_action"):
        if store is None or val_episodes is None or len(val_episodes) == 0:
            raise ValueError(
                f"goal_source={source} needs the held-out (val) trajectories of the training data"
            )
        if source == "random_action" and normalizer is None:
            raise ValueError("goal_source=random_action needs the action normalizer")
        rand = normalizer if source == "random_action" else None
        n_steps = frameskip * goal_H
        return [dset_target(env, store, val_episodes, n_steps=n_steps, episode_seed=s, random_actions=rand)
                for s in seeds]  # fmt: skip
    if source == "file":
        if goal_file is None:
            raise ValueError("goal_source=file needs a goal file")
        return file_targets(env, goal_file, seeds)
    raise ValueError(f"unknown goal_source {source!r} (choices: {', '.join(GOAL_SOURCES)})")

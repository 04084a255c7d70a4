"""Planning evaluation (reference sections 5.1, 5.6, 5.7), Ray-free.

``evaluate(wm, cfg)`` runs ``cfg.eval.n_evals`` episodes for every seed of ``cfg.eval.seeds``:

1. targets from the goal source (:mod:`dinowm_core.evaluation.goals`);
2. every episode resets its own env (:class:`~dinowm_core.evaluation.episodes.EpisodeGroup`);
3. each planning step gathers the observations of *all* episodes and makes **one** policy call for the
   batch; the returned env actions (model actions denormalized and split into ``frameskip`` env steps) are
   executed in the real envs, which stop at the fixed env-step ``budget``. MPC replans from the true state
   after ``n_taken_actions`` model steps; open-loop CEM/GD plan once and the episode ends when the plan
   does (``env_steps`` records it). Finished episodes stay in the batch (their rows are ignored) so that MPC
   warm starts keep their episode order;
4. per-episode metrics (success at the end of the budget; "success at any step" as a secondary, labelled
   metric; final distance / Chamfer; ``visual_dist`` / ``proprio_dist``, the mean absolute difference between
   the final real observation and the goal observation in raw pixels (0-255) / raw proprio (reference 5.7's
   ``mean_visual_dist`` / ``mean_proprio_dist``, computed in float); embedding divergence between the imagined
   and the real final frame; planning seconds per env step), aggregated per seed and pooled with a 95%
   Wilson interval;
5. ``results.json`` and, for the first ``n_plot_samples`` episodes of each seed, an mp4 of
   [real | imagined (decoded) | goal].

The episode side is reached through :class:`Episodes`, whose ``call`` function fans a method out to the
env groups; a Ray runner passes actor handles and a ``ray.get`` fan-out and reuses everything else.

Deviations from the reference: a fixed budget without oracle stop is the headline (``oracle_stop=true``
reproduces the reference's stop-at-success and is labelled); the imagined trajectory is the open-loop
rollout of the executed actions from obs_0 (as the reference evaluator); divergences are per-episode MSEs;
the reference's visual distance wraps around on uint8 images (bug 13), ours is taken in float.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinowm_core.config import Config
from dinowm_core.evaluation.episodes import EpisodeGroup, Obs
from dinowm_core.evaluation.goals import Target, make_targets
from dinowm_core.evaluation.policy import Policy
from dinowm_core.evaluation.records import EpisodeOutcome
from dinowm_core.evaluation.report import EvalResult, goal_distances, protocol
from dinowm_core.evaluation.video import write_episode_video
from dinowm_core.presets import resolve_goal_H

log = logging.getLogger(__name__)

Call = Callable[[Sequence[Any], str, Sequence[tuple]], list[Any]]

#: seconds between progress lines of a running batch (a long evaluation would otherwise be silent for minutes)
PROGRESS_INTERVAL_S = 10.0


def local_call(groups: Sequence[Any], method: str, args: Sequence[tuple]) -> list[Any]:
    return [getattr(g, method)(*a) for g, a in zip(groups, args, strict=True)]


class Episodes:
    """All episodes of a batch, spread over env groups (in-process objects or Ray actors)."""

    def __init__(self, groups: Sequence[Any], slots: Sequence[int], call: Call = local_call) -> None:
        self.groups, self.slots, self.call = list(groups), list(slots), call

    @property
    def capacity(self) -> int:
        return sum(self.slots)

    def _split(self, rows: Sequence[Any]) -> list[Any]:
        out, start = [], 0
        for n in self.slots:
            out.append(rows[start : start + n])
            start += n
        return out

    def reset(self, targets: list[Target], record: list[bool]) -> None:
        """Fill the slots in order: group g gets the next ``slots[g]`` episodes (groups left empty idle)."""
        if len(targets) > self.capacity:
            raise ValueError(f"{len(targets)} episodes for {self.capacity} env slots")
        parts = zip(self._split(targets), self._split(range(len(targets))), self._split(record), strict=True)
        args = [(list(t), list(i), list(r)) for t, i, r in parts]
        self.active = [g for g, a in enumerate(args) if a[0]]
        self.counts = [len(args[g][0]) for g in self.active]
        self.call(self._groups(), "reset", [args[g] for g in self.active])

    def _groups(self) -> list[Any]:
        return [self.groups[g] for g in self.active]

    def observe(self) -> tuple[Obs, Obs, np.ndarray]:
        """(obs, goal obs, done) of every episode, concatenated in episode order."""
        parts = self.call(self._groups(), "observe", [()] * len(self.active))
        obs = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
        goal = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
        return obs, goal, np.concatenate([p[2] for p in parts])

    def step(self, actions: np.ndarray) -> list[int]:
        """actions (B, n, d) in episode order -> env steps executed per episode."""
        bounds = np.cumsum([0, *self.counts])
        rows = [(actions[a:b],) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return [n for part in self.call(self._groups(), "step", rows) for n in part]

    def results(self) -> list[dict[str, Any]]:
        return [r for part in self.call(self._groups(), "results", [()] * len(self.active)) for r in part]

    def progress(self) -> tuple[np.ndarray, np.ndarray]:
        """(done, at the goal now) flags of every episode, in episode order."""
        parts = self.call(self._groups(), "progress", [()] * len(self.active))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class BatchProgress:
    """Progress lines of a running batch, at most one per :data:`PROGRESS_INTERVAL_S` seconds, e.g.
    ``seed 0: step 3/10, 12/50 episodes done, 7 at the goal now, ETA 1m05s``. The episodes are asked for their
    state only when a line is due; the step total follows from the most env steps one step executed."""

    def __init__(self, episodes: Episodes, seed: int, budget: int | None) -> None:
        self.episodes, self.seed, self.budget = episodes, seed, budget
        self.t0 = self.last = time.perf_counter()
        self.steps = self.chunk = 0

    def update(self, executed: Sequence[int]) -> None:
        self.steps += 1
        self.chunk = max(self.chunk, *executed, 0)
        now = time.perf_counter()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        done, success = self.episodes.progress()
        step, eta = f"{self.steps}", ""
        if self.budget and self.chunk:
            total = max(self.steps, math.ceil(self.budget / self.chunk))
            step = f"{self.steps}/{total}"
            if not done.all():
                eta = f", ETA {_duration((now - self.t0) / self.steps * (total - self.steps))}"
        log.info("seed %d: step %s, %d/%d episodes done, %d at the goal now%s", self.seed, step, done.sum(),
                 len(done), success.sum(), eta)  # fmt: skip


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def run_batch(
    episodes: Episodes,
    policy: Policy,
    targets: list[Target],
    seed: int,
    n_record: int,
    budget: int | None = None,
) -> list[EpisodeOutcome]:
    """Run one batch of episodes to the end of their budget; returns the episode results in target order.
    ``budget`` (env steps) sizes the progress lines' step total and ETA and tells the policy how many steps
    are left (``planner.end_at_budget``); None: the policy is not told."""
    episodes.reset(targets, [i < n_record for i in range(len(targets))])
    policy.reset([t.episode_seed for t in targets], seed)
    plan_s = np.zeros(len(targets))
    calls = np.zeros(len(targets), np.int64)
    steps = np.zeros(len(targets), np.int64)
    progress = BatchProgress(episodes, seed, budget)
    while True:
        obs, goal, done = episodes.observe()
        if done.all():
            break
        # the live episodes run in step; one stopped early by the oracle is ignored
        left = None if budget is None else int(budget - steps[~done].min())
        t0 = time.perf_counter()
        actions = np.asarray(policy.plan(obs, goal, steps_left=left), np.float64)
        elapsed = time.perf_counter() - t0
        if actions.ndim != 3 or actions.shape[0] != len(targets) or actions.shape[1] < 1:
            raise RuntimeError(
                f"policy returned actions of shape {actions.shape} for {len(targets)} episodes"
            )
        plan_s[~done] += elapsed / max(1, int((~done).sum()))  # a batched call's time, shared by its episodes
        calls[~done] += 1
        executed = episodes.step(actions)
        steps += np.asarray(executed, np.int64)
        progress.update(executed)
        if not policy.closed_loop:
            break
    final, goal, _ = episodes.observe()
    visual_dist, proprio_dist = goal_distances(final, goal)
    results = episodes.results()
    for i, (r, s, c) in enumerate(zip(results, plan_s, calls, strict=True)):
        m = r.metrics
        m.seed, m.plan_calls, m.plan_seconds = seed, int(c), float(s)
        m.plan_s_per_step = float(s) / max(1, m.env_steps)
        m.visual_dist, m.proprio_dist = float(visual_dist[i]), float(proprio_dist[i])
    return results


def add_imagination(results: list[EpisodeOutcome], imaginer: Any, frameskip: int) -> None:
    """Embedding divergence (and decoded frames for recorded episodes), batched by model-step count."""
    by_len: dict[int, list[EpisodeOutcome]] = defaultdict(list)
    for r in results:
        n = len(r.actions) // frameskip
        if (
            n >= 1
        ):  # an episode shorter than one model step has nothing to imagine (its divergences stay None)
            by_len[n].append(r)
    for n, rows in by_len.items():
        obs0 = {k: np.stack([r.obs0[k] for r in rows]) for k in rows[0].obs0}
        final = {k: np.stack([r.model_step_obs[k] for r in rows]) for k in rows[0].model_step_obs}
        actions = np.stack([r.actions[: n * frameskip] for r in rows])
        decode = any(r.frames is not None for r in rows)
        out = imaginer.imagine(obs0, actions, final, decode)
        for j, r in enumerate(rows):
            r.metrics.div_visual_emb = float(out["div_visual_emb"][j])
            r.metrics.div_proprio_emb = float(out["div_proprio_emb"][j])
            if "frames" in out:
                r.imagined = out["frames"][j]


def targets_for_seed(
    cfg: Config, env: Any, seed: int, dataset: Any = None, normalizer: Any = None
) -> list[Target]:
    """``dataset``: the val :class:`~dinowm_core.data.windows.TrajectoryDataset` (dset / random_action)."""
    e = cfg.eval
    goal_H = e.goal_H if e.goal_H is not None else cfg.planner.horizon
    return make_targets(
        env, e.goal_source, seed, e.n_evals, frameskip=cfg.frameskip, goal_H=goal_H,
        store=getattr(dataset, "store", None), val_episodes=getattr(dataset, "episodes", None),
        normalizer=normalizer, goal_file=e.goal_file, seed_scheme=e.seed_scheme,
    )  # fmt: skip


def run_evaluation(
    cfg: Config,
    episodes: Episodes,
    policy: Policy,
    target_env: Any,
    *,
    imaginer: Any = None,
    out_dir: str | Path | None = None,
    dataset: Any = None,
    normalizer: Any = None,
) -> EvalResult:
    """The evaluation loop over seeds, given env groups and a policy (in-process or remote)."""
    cfg = resolve_goal_H(cfg)
    if dataset is None:
        dataset = eval_dataset(cfg)
    result = EvalResult(protocol(cfg))
    out = Path(out_dir) if out_dir is not None else None
    for seed in cfg.eval.seeds:
        targets = targets_for_seed(cfg, target_env, seed, dataset, normalizer)
        t0 = time.perf_counter()
        log.info("seed %d: planning %d episodes of %d env steps", seed, len(targets), cfg.eval.budget)
        results = run_batch(episodes, policy, targets, seed, cfg.eval.n_plot_samples, cfg.eval.budget)
        if imaginer is not None:
            add_imagination(results, imaginer, cfg.frameskip)
        result.per_seed[seed] = [r.metrics for r in results]
        summ = result.summary(seed)
        log.info("seed %d: success %.3f (95%% CI %.3f-%.3f) over %d episodes in %.1fs", seed,
                 summ["success_rate"], *summ["success_ci95"], summ["n"], time.perf_counter() - t0)  # fmt: skip
        if out is not None:
            for r in results:
                if r.frames is not None:
                    m = r.metrics
                    name = f"seed{seed}_ep{m.index:03d}_{'success' if m.success else 'failure'}.mp4"
                    write_episode_video(
                        out / "videos" / name, r.frames, r.imagined, r.goal_visual, cfg.frameskip, maps=r.maps
                    )
                    result.videos.append(str(Path("videos") / name))
    if out is not None:
        result.write_json(out / "results.json")
    return result


def eval_dataset(cfg: Config) -> Any:
    """The val trajectories the goal source needs: dset / random_action goals come from them (a missing
    dataset is an error), random_state episodes take their layouts (optional, see :func:`layout_dataset`)."""
    if cfg.eval.goal_source in ("dset", "random_action"):
        from dinowm_core.data.windows import build_datasets

        return build_datasets(cfg)[3]
    if cfg.eval.goal_source == "random_state":
        return layout_dataset(cfg)
    return None


def layout_dataset(cfg: Config) -> Any:
    """The val trajectories whose env params give random_state episodes their layouts (reference 5.2's
    ``update_env``), or None (default layout, logged) when ``data.path`` is unset or cannot be read."""
    path = cfg.data.path
    if not path or not (Path(path) / "manifest.json").is_file():
        log.info(
            "random_state goals: no dataset at data.path=%r, episodes use the env's default layout", path
        )
        return None
    from dinowm_core.data.store import DatasetError
    from dinowm_core.data.windows import build_datasets

    try:
        val = build_datasets(cfg)[3]
    except DatasetError as e:
        log.warning("random_state goals: dataset %s unusable (%s), episodes use the default layout", path, e)
        return None
    log.info("random_state goals: each episode takes the layout of one of %d val trajectories of %s",
             len(val.episodes), path)  # fmt: skip
    return val


def evaluate(
    wm: Any,
    cfg: Config,
    *,
    policy: Policy | None = None,
    out_dir: str | Path | None = None,
    dataset: Any = None,
) -> EvalResult:
    """In-process evaluation of ``wm`` (None only with ``eval.policy=random``) under ``cfg``."""
    from dinowm_core.envs.base import make_env
    from dinowm_core.evaluation.adapter import ModelAdapter, resolve_device
    from dinowm_core.evaluation.policy import build_policy

    e = cfg.eval
    size = e.render_size or cfg.img_size
    group = EpisodeGroup(cfg.env.name, e.n_evals, img_size=size, budget=e.budget, frameskip=cfg.frameskip,
                         oracle_stop=e.oracle_stop, env_kwargs=cfg.env.kwargs)  # fmt: skip
    adapter = ModelAdapter(wm, device=resolve_device(e.device)) if wm is not None else None
    if policy is None:
        policy = build_policy(cfg, adapter=adapter, action_box=group.action_box())
    target_env = make_env(cfg.env.name, img_size=size, **cfg.env.kwargs)
    normalizer = adapter.normalizer if adapter is not None else None
    return run_evaluation(cfg, Episodes([group], [e.n_evals]), policy, target_env, imaginer=adapter,
                          out_dir=out_dir, dataset=dataset, normalizer=normalizer)  # fmt: skip


def check_model_env(cfg: Config, model_cfg: Config) -> None:
    """The evaluation config must fit the checkpoint: same env, and the model's action input must be the
    env's per-step action dim times frameskip (its proprio input the env's proprio dim)."""
    want = cfg.action_dim
    if model_cfg.action_dim != want:
        raise ValueError(
            f"checkpoint action dim {model_cfg.action_dim} != env {cfg.env.name!r} action dim "
            f"{cfg.env.model_action_dim} x frameskip {cfg.frameskip} = {want}"
        )
    if model_cfg.env.name != cfg.env.name or model_cfg.env.proprio_dim != cfg.env.proprio_dim:
        raise ValueError(
            f"checkpoint was trained on env {model_cfg.env.name!r} "
            f"(proprio dim {model_cfg.env.proprio_dim}), "
            f"the evaluation env is {cfg.env.name!r} (proprio dim {cfg.env.proprio_dim})"
        )

"""Dataset generation: roll a policy in a planning env and write a trajectory store (``dinowm data generate``).

Determinism: episode e's env seed and policy RNG derive only from ``SeedSequence(seed, spawn_key=(e,))``, and
the shard layout depends only on the episode count, so the dataset (every data file's bytes) is identical for
any number of workers. Each episode resets with the env's initial ``env_params``, so an env reused across
episodes in one worker behaves as a fresh one.

Threads: every generating process runs its BLAS/OpenMP pools single-threaded (the pool's workers through
``_WORKER_ENV``, the one-worker path in-process through threadpoolctl): one env per core is the parallelism,
and an oversubscribed OpenBLAS made Wall's per-reset layout resize ~50x slower on 2 busy cores.

Resumability: shards are written into ``<out>.partial/`` (Arrow file by rename, then a ``shard-*.json``
sidecar with its checksum and statistics). A rerun with the same parameters skips shards whose checksum still
matches and writes the rest; the last step assembles the manifest and renames the directory to ``<out>``.

:func:`generate_shard` is the unit of work shared by the multiprocessing pool here and the Ray tasks in
``ray_jobs/generate.py``.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from dinowm_core.data.policies import check_policy, make_policy, preset_env_kwargs
from dinowm_core.data.store import Episode
from dinowm_core.data.writer import ShardInfo, assemble, atomic_write_text, sha256_file, write_shard
from dinowm_core.envs.base import PlanningEnv, make_env

log = logging.getLogger(__name__)

PARAMS_FILE = "generation.json"
# Rendering libraries (Mesa llvmpipe, OpenMP) start one thread per core in every worker; with one env per
# worker process that oversubscribes the machine.
_WORKER_ENV = {
    "LP_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


# Resuming keeps finished shards, so a shard is the work an interruption can lose. Memory-Maze simulates ~30
# steps/s (a 1000-step episode takes ~35 s): one episode per shard, so a rerun never redoes a finished episode.
_MAX_AUTO_EPISODES_PER_SHARD = {"memory_maze": 1}


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during generation: the finished shards stay in ``partial`` and the same command resumes."""

    def __init__(self, partial: Path, done: int, total: int) -> None:
        super().__init__(
            f"interrupted: {done}/{total} shards are kept in {partial}; rerun the same command to resume"
        )
        self.partial, self.done, self.total = partial, done, total


@dataclass(frozen=True)
class GenerationSpec:
    """Everything that determines a generated dataset's contents."""

    env_name: str
    episodes: int
    steps: int
    seed: int = 0
    img_size: int = 64
    policy: str = "random"
    episodes_per_shard: int = 0  # 0 = derived from the episode count (never from the worker count)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    env_factory: str | None = None  # "module:callable(img_size=..., **env_kwargs)"; None = make_env(env_name)

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.steps < 1:
            raise ValueError(f"episodes and steps must be >= 1, got {self.episodes}, {self.steps}")
        if self.img_size < 1:
            raise ValueError(f"img_size must be >= 1, got {self.img_size}")
        check_policy(self.policy, self.env_name)  # before anything is written, not in the first worker
        if self.episodes_per_shard == 0:
            cap = _MAX_AUTO_EPISODES_PER_SHARD.get(self.env_name, 100)
            object.__setattr__(self, "episodes_per_shard", min(cap, max(1, math.ceil(self.episodes / 32))))

    @property
    def num_shards(self) -> int:
        return math.ceil(self.episodes / self.episodes_per_shard)

    def shard_episodes(self, shard: int) -> range:
        start = shard * self.episodes_per_shard
        return range(start, min(start + self.episodes_per_shard, self.episodes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def episode_seeds(seed: int, episode: int) -> tuple[int, np.random.Generator]:
    """(env reset seed, policy RNG) of one episode, from (seed, episode) alone."""
    env_seq, policy_seq = np.random.SeedSequence(seed, spawn_key=(episode,)).spawn(2)
    return int(env_seq.generate_state(1)[0]), np.random.default_rng(policy_seq)


_ENV_CACHE: dict[tuple, tuple[PlanningEnv, dict[str, Any]]] = {}


def build_env(spec: GenerationSpec) -> tuple[PlanningEnv, dict[str, Any]]:
    """``(env, its initial env_params)`` for ``spec``, cached: one env per process (MuJoCo renderers must not
    share a process, platform notes "Environments")."""
    key = (spec.env_name, spec.env_factory, spec.img_size, json.dumps(spec.env_kwargs, sort_keys=True))
    cached = _ENV_CACHE.get(key)
    if cached is None:
        if spec.env_factory:
            module, _, attr = spec.env_factory.partition(":")
            env = getattr(importlib.import_module(module), attr)(img_size=spec.img_size, **spec.env_kwargs)
        else:
            env = make_env(spec.env_name, img_size=spec.img_size, **spec.env_kwargs)
        if env.env_name != spec.env_name:
            raise ValueError(f"env factory built {env.env_name!r}, expected {spec.env_name!r}")
        _ENV_CACHE.clear()  # never keep two renderers alive in one process
        cached = _ENV_CACHE[key] = (env, dict(env.env_params))
    return cached


def run_episode(
    env: PlanningEnv, initial_params: dict[str, Any], spec: GenerationSpec, episode: int
) -> Episode:
    """Roll ``spec.policy`` for ``spec.steps`` steps; ``actions[t]`` is applied at ``frames[t]``."""
    env_seed, rng = episode_seeds(spec.seed, episode)
    obs, info = env.reset(seed=env_seed, options={"env_params": initial_params})
    params = dict(env.env_params)
    policy = make_policy(spec.policy, env, rng)
    frames, actions, states, proprio = [], [], [], []
    for _ in range(spec.steps):
        state = np.asarray(info["state"], np.float64)
        action = np.asarray(policy(state))
        action = action.astype(np.int64 if action.dtype.kind in "iu" else np.float64)  # discrete: the index
        frames.append(obs["visual"])
        states.append(state)
        proprio.append(obs["proprio"])
        actions.append(action)
        obs, _, _, _, info = env.step(action)
    if frames[0].shape != (spec.img_size, spec.img_size, 3):
        raise ValueError(
            f"{spec.env_name}: frames are {frames[0].shape}, expected ({spec.img_size}, {spec.img_size}, 3)"
        )
    return Episode.build(np.stack(frames), np.stack(actions), np.stack(states), np.stack(proprio), params)


def simulate_shard(spec: GenerationSpec, shard: int) -> Iterator[Episode]:
    """The episodes of shard ``shard``, simulated one at a time."""
    env, params = build_env(spec)
    for e in spec.shard_episodes(shard):
        yield run_episode(env, params, spec, e)


def generate_shard(spec_dict: dict[str, Any], shard: int, partial_dir: str) -> dict[str, Any]:
    """Generate and write shard ``shard`` into ``partial_dir`` (Arrow file, then its JSON sidecar).

    Episodes are compressed as they are simulated, so a process holds one episode, not a whole shard.
    """
    spec = GenerationSpec(**spec_dict)
    eps = spec.shard_episodes(shard)
    # actions are stored in env units
    info = write_shard(partial_dir, shard, simulate_shard(spec, shard), eps.start, 1.0)
    num_actions = getattr(build_env(spec)[0], "num_actions", None)
    if (
        num_actions is not None
    ):  # a discrete env: the stored index picks one of num_actions (the model's one-hot)
        info.spaces["action"]["num_actions"] = int(num_actions)
    atomic_write_text(_sidecar(Path(partial_dir), shard), json.dumps(info.to_dict()))
    return info.to_dict()


def _sidecar(partial: Path, shard: int) -> Path:
    return partial / f"shard-{shard:05d}.json"


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def prepare(spec: GenerationSpec, out: str | Path) -> tuple[Path, list[int], dict[int, ShardInfo]]:
    """Create or reopen ``<out>.partial``; return it, the shards still to do and the verified finished ones."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    partial = partial_dir(out)
    partial.mkdir(parents=True, exist_ok=True)
    params_file = partial / PARAMS_FILE
    if params_file.is_file():
        old = json.loads(params_file.read_text())
        if old != spec.to_dict():
            _replace_unfinished(partial, old, spec.to_dict())
    if not params_file.is_file():
        atomic_write_text(params_file, json.dumps(spec.to_dict(), sort_keys=True))
    done: dict[int, ShardInfo] = {}
    for shard in range(spec.num_shards):
        side = _sidecar(partial, shard)
        if not side.is_file():
            continue
        info = ShardInfo.from_dict(json.loads(side.read_text()))
        arrow = partial / info.file
        if arrow.is_file() and arrow.stat().st_size == info.bytes and sha256_file(arrow) == info.sha256:
            done[shard] = info
        else:
            log.warning("%s: checksum mismatch, regenerating shard %d", arrow, shard)
            side.unlink()
    todo = [s for s in range(spec.num_shards) if s not in done]
    return partial, todo, done


def _replace_unfinished(partial: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Clear ``partial`` for a generation with other parameters, unless it holds finished shards.

    A run that failed before its first shard (a bad argument, a crashed simulator) leaves nothing worth
    keeping, so the corrected command simply starts over; finished shards are only ever deleted by the user.
    """
    diff = ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))
    finished = sorted(f.name for f in partial.glob("shard-*.json") if (partial / f"{f.stem}.arrow").is_file())
    if finished:
        raise ValueError(
            f"{partial} holds {len(finished)} finished shard(s) of an unfinished generation with different "
            f"{diff}: rerun that command to finish it, or delete the directory ({partial}) to start over"
        )
    log.info("%s: no finished shard; replacing an unfinished generation with different %s", partial, diff)
    for f in partial.iterdir():
        if f.is_file() and (f.name == PARAMS_FILE or f.name.startswith("shard-") or f.name.endswith(".tmp")):
            f.unlink()


def finalize(spec: GenerationSpec, out: str | Path, shards: dict[int, ShardInfo]) -> dict[str, Any]:
    """Write the manifest into ``<out>.partial`` and rename it to ``out``."""
    out, partial = Path(out), partial_dir(out)
    if sorted(shards) != list(range(spec.num_shards)):
        raise RuntimeError(
            f"{partial}: shards {sorted(set(range(spec.num_shards)) - set(shards))} are missing"
        )
    base = {
        "env": {"name": spec.env_name, "action_scale": 1.0, "kwargs": spec.env_kwargs},
        "generator": {"source": "dinowm data generate", "policy": spec.policy, "seed": spec.seed,
                      "steps": spec.steps, "episodes_per_shard": spec.episodes_per_shard},
        "conventions": "action[t] is applied at frame t; the frame after the last action is not stored",
    }  # fmt: skip
    manifest = assemble(partial, list(shards.values()), base)
    for shard in shards:
        _sidecar(partial, shard).unlink()
    (partial / PARAMS_FILE).unlink()
    os.replace(partial, out)
    return manifest


@contextmanager
def _worker_environment() -> Iterator[None]:
    """Spawned children copy ``os.environ`` at start: set the thread caps only around the pool's creation."""
    saved = {k: os.environ.get(k) for k in _WORKER_ENV}
    os.environ.update(_WORKER_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ignore_sigint() -> None:
    """Pool initializer: Ctrl-C is the parent's to handle (it terminates the pool), so workers print nothing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the pool spawns, so a child inherits the ignore before its initializer runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


def _run_shard(args: tuple[dict[str, Any], int, str]) -> dict[str, Any]:
    return generate_shard(*args)


def _single_threaded_libraries() -> AbstractContextManager[Any]:
    """Cap BLAS/OpenMP pools at one thread in this process (the pool's workers get it from the environment).

    Why: an env's small matrix products (Wall's layout resize at every reset) ran ~50x slower when
    OpenBLAS wakes a thread per core on a busy 2-core machine.
    """
    return threadpool_limits(limits=1)


def generate(
    env_name: str,
    episodes: int,
    steps: int,
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    img_size: int = 64,
    policy: str = "random",
    *,
    episodes_per_shard: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    env_factory: str | None = None,
    max_shards: int | None = None,
    progress: bool = True,
) -> Path | None:
    """Generate a dataset into ``out``; returns ``out``, or None when stopped early by ``max_shards``.

    Ctrl-C terminates the workers (which ignore SIGINT themselves) and raises :class:`GenerationInterrupted`
    with the count of finished shards kept for the rerun.
    """
    from tqdm import tqdm

    env_kwargs = {**preset_env_kwargs(policy), **(env_kwargs or {})}  # e.g. two_rooms_bfs: layout=two_rooms
    spec = GenerationSpec(env_name, episodes, steps, seed, img_size, policy, episodes_per_shard,
                          env_kwargs, env_factory)  # fmt: skip
    partial, todo, done = prepare(spec, out)
    if max_shards is not None:
        todo = todo[:max_shards]
    tasks = [(spec.to_dict(), s, str(partial)) for s in todo]
    bar = tqdm(total=episodes, initial=sum(len(i.lengths) for i in done.values()), unit="ep",
               desc=f"generate {env_name}", disable=not progress)  # fmt: skip
    try:
        with bar:
            if workers <= 1 or len(tasks) <= 1:
                with _single_threaded_libraries():
                    _collect(map(_run_shard, tasks), done, bar)
            else:
                with _worker_environment(), _sigint_ignored():
                    pool = mp.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_ignore_sigint)
                with pool, _deferred_sigint() as interrupted:  # leaving the block terminates the workers
                    _collect(_polled(pool.imap_unordered(_run_shard, tasks), interrupted), done, bar)
    except KeyboardInterrupt:
        # Count sidecars, not results: a worker may have finished a shard the parent had not yet received.
        kept = sum(_sidecar(partial, s).is_file() for s in range(spec.num_shards))
        raise GenerationInterrupted(partial, kept, spec.num_shards) from None
    if len(done) < spec.num_shards:
        log.info("stopped with %d/%d shards in %s", len(done), spec.num_shards, partial)
        return None
    finalize(spec, out, done)
    return Path(out)


@contextmanager
def _deferred_sigint() -> Iterator[threading.Event]:
    """Ctrl-C sets the yielded event instead of raising wherever the main thread happens to be: raised inside
    the pool's result queue (a lock's release), KeyboardInterrupt turns into "release unlocked lock"."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _polled(results: Any, interrupted: threading.Event, poll_s: float = 0.2) -> Iterator[dict[str, Any]]:
    """The pool's results as they come, raising KeyboardInterrupt here once ``interrupted`` is set."""
    while True:
        if interrupted.is_set():
            raise KeyboardInterrupt
        try:
            yield results.next(timeout=poll_s)
        except mp.TimeoutError:
            continue
        except StopIteration:
            return


def _collect(results: Iterable[dict[str, Any]], done: dict[int, ShardInfo], bar: Any) -> None:
    for d in results:
        info = ShardInfo.from_dict(d)
        done[info.index] = info
        bar.update(len(info.lengths))

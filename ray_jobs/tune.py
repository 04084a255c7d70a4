"""Hyperparameter sweeps on Ray Tune: ``dinowm tune SPACE [CKPT] [overrides]`` and ``python -m ray_jobs.tune``.

    dinowm tune train_wall data.path=data/wall --num-samples 8 --max-concurrent 2
    dinowm tune planner_wall outputs/ray_results/wall-.../checkpoint_... n_evals=20
    dinowm tune --resume tune-train_wall-20261205-101500-3fa2c1        # continue an interrupted sweep
    ray job submit -- python -m ray_jobs.tune train_wall data.path=/shared/data/wall output_dir=/shared/out

A sweep is one Tune experiment (``<ray.storage_path>/<sweep name>``) of function trainables, one per trial
(``ray_jobs.tune_trials``): a training trial fits a ``TorchTrainer`` like ``dinowm train`` and reports each
epoch's validation to Tune (ASHA stops the worse ones); a planner trial evaluates one checkpoint on the sweep's
episodes and seeds. The search space (``tune_spaces/``, ``ray_jobs.tune_space``) is checked against the config
schema and the dataset before any trial starts.

MLflow: one run for the sweep, one child run per trial (params, per-step metrics, the trial's checkpoint).
At the end (:func:`finish`): a ranked table, ``results.json`` / ``results.csv`` and plots in the sweep
directory (also artifacts of the sweep's run), and the best trial exported to ``<sweep dir>/best``: a checkpoint
directory that ``dinowm plan`` and ``dinowm serve`` take (for a planner sweep, the evaluated checkpoint with the
best planner settings in its config), registered as a model version.

The sweep's settings are kept in ``<sweep dir>/dinowm_sweep.json``; ``--resume`` restores the Tune experiment
from there: finished trials are kept, unfinished ones start again (a training trial's Train run continues from
its last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from dinowm_core.config import Config, ConfigError
from ray_jobs import tracking
from ray_jobs.job_config import JobConfig, load_job_config, resolve_paths, split_job_overrides
from ray_jobs.train_preflight import PreflightError, storage_root
from ray_jobs.tune_finish import SweepOutcome, finish
from ray_jobs.tune_space import SearchSpace, SpaceError, check_space, fixed_by_command_line, load_space

log = logging.getLogger(__name__)

SWEEP_FILE = "dinowm_sweep.json"
SPACE_COPY = "space.yaml"
SEARCHERS = ("random", "optuna")
#: seconds between the driver's sweep status lines
STATUS_EVERY_S = 30.0
#: a planner trial's own CPU (the planner runs in the trial's process; its episodes in env actors)
PLANNER_TRIAL_CPUS = 1.0
# A training trial's process only waits for its Train run: Tune rejects zero resources, so a sliver.
TRAIN_TRIAL_CPUS = 0.01


class SweepInterrupted(KeyboardInterrupt):
    def __init__(self, name: str, sweep_dir: str) -> None:
        super().__init__(name)
        self.name, self.sweep_dir = name, sweep_dir


# ---- building a sweep ---------------------------------------------------------------------------------------


def _eval_shortcuts(overrides: list[str]) -> list[str]:
    from ray_jobs.evaluate import eval_shortcuts

    return eval_shortcuts(overrides)


def prepare(space_ref: str, args: list[str]) -> tuple[SearchSpace, Config, JobConfig, dict[str, Any]]:
    """Load and check everything a sweep needs before any cluster starts -> (space, base config, job, extra).

    ``args``: for a planner space, the checkpoint first; then overrides (model, ``ray.*``, ``mlflow.*``).
    Raises :class:`SpaceError` / ``ConfigError`` / :class:`PreflightError` naming the key.
    """
    space = load_space(space_ref)
    extra: dict[str, Any] = {}
    if space.kind == "planner":
        if not args or "=" in args[0]:
            raise SpaceError(f"{space.name} is a planner space: give the checkpoint to tune on first "
                             f"(dinowm tune {space.name} CKPT key=value ...)")  # fmt: skip
        ckpt_ref, args = args[0], args[1:]
    core, job_overrides = split_job_overrides(args)
    fixed = fixed_by_command_line(space, core)
    if fixed:
        log.info("fixed on the command line, not searched: %s", ", ".join(sorted(fixed)))
        space = space.without(fixed)
    if not space.params:
        raise SpaceError(f"search space {space.path}: the command line fixes every searched key")
    job = load_job_config(job_overrides)
    if space.kind == "train":
        from dinowm_core.presets import load_config

        cfg, job = resolve_paths(load_config([*space.base_overrides(), *core]), job)
        check_space(space, cfg)
        _preflight_trials(space, cfg, job)
    else:
        from dinowm_core.evaluation.loop import check_model_env
        from dinowm_core.presets import plan_config
        from dinowm_core.training.checkpoint import load_config_from_checkpoint
        from ray_jobs.runs import checkpoint_for

        ckpt = checkpoint_for(ckpt_ref, core, job.mlflow).resolve()
        trained = load_config_from_checkpoint(ckpt)
        if space.env and space.env != trained.env.name:
            raise SpaceError(f"search space {space.path} tunes planners for env {space.env!r}; the checkpoint "
                             f"{ckpt} was trained on {trained.env.name!r}")  # fmt: skip
        plan_overrides = [*space.base_overrides(), *_eval_shortcuts(core)]
        cfg, job = resolve_paths(plan_config(trained, plan_overrides), job)
        check_model_env(cfg, trained)
        check_space(space, cfg)
        extra = {"checkpoint": str(ckpt), "plan_overrides": plan_overrides}
    return space, cfg, job, extra


def _preflight_trials(space: SearchSpace, cfg: Config, job: JobConfig) -> None:
    """``dinowm train``'s preflight for the base config, and the window / batch checks for every drawable value
    of the keys that decide them (a trial with ``num_hist=8`` on 10-step episodes fails here, not later)."""
    import itertools

    from dinowm_core.data.store import DatasetError
    from dinowm_core.data.windows import check_compatible
    from dinowm_core.presets import apply_overrides
    from ray_jobs.train_preflight import preflight
    from ray_jobs.tune_space import as_override

    manifest = preflight(cfg, job.ray)
    shaping = [k for k in space.params if k in ("num_hist", "frameskip", "num_pred", "training.batch_size",
                                                "training.grad_accum") or k.startswith("data.")]  # fmt: skip
    values = [space.params[k].drawable() for k in shaping]
    workers = max(job.ray.num_workers, 1)
    for combo in itertools.islice(itertools.product(*values), 256):
        trial = apply_overrides(cfg, [as_override(k, v) for k, v in zip(shaping, combo, strict=True)])
        where = ", ".join(f"{k}={v!r}" for k, v in zip(shaping, combo, strict=True)) or "the base config"
        try:
            check_compatible(manifest, trial, trial.data.path)
        except DatasetError as e:
            raise PreflightError(f"search space {space.path}: a trial with {where}: {e}") from None
        t = trial.training
        if t.batch_size % workers or (t.batch_size // workers) % t.grad_accum:
            raise PreflightError(f"search space {space.path}: a trial with {where}: training.batch_size="
                                 f"{t.batch_size} must split into ray.num_workers={job.ray.num_workers} x "
                                 f"training.grad_accum={t.grad_accum}")  # fmt: skip


def new_sweep_name(space: SearchSpace) -> str:
    return f"tune-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def default_concurrency(space: SearchSpace, job: JobConfig, cpus_per_actor: float) -> int:
    """Trials that fit the connected cluster at once: a training trial holds its Train workers, a planner
    trial its own CPU and at least one env actor."""
    import ray

    total = ray.cluster_resources()
    r = job.ray
    if space.kind == "planner":
        return max(1, int(total.get("CPU", 1) // (PLANNER_TRIAL_CPUS + cpus_per_actor)))
    workers = max(r.num_workers, 1)
    fit = int(total.get("CPU", 1) // (workers * r.cpus_per_worker + TRAIN_TRIAL_CPUS) + 1e-9)
    if r.use_gpu:
        fit = min(fit, int(total.get("GPU", 0) // (workers * r.gpus_per_worker) + 1e-9))
    return max(1, fit)


def _searcher(search: str, space: SearchSpace, seed: int, max_concurrent: int = 0) -> Any:
    if search == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a generator passed in: it takes its own limit.
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    if search == "optuna":
        grid = [k for k, d in space.params.items() if d.is_grid]
        if grid:
            raise SpaceError(f"search space {space.path}: {', '.join(grid)}: grid is not supported with "
                             f"--search optuna (TPE samples); use choice")  # fmt: skip
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=TPESampler(seed=seed))
    raise SpaceError(f"--search: expected one of {', '.join(SEARCHERS)}, got {search!r}")


def _scheduler(space: SearchSpace, cfg: Config) -> Any:
    if space.scheduler.name != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = space.scheduler
    # One report per epoch: the trial's time is its epoch count (training_iteration counts reports). A trial
    # that reaches max_t ends on its own (stop_last_trials=False): it closes its MLflow run and logs its checkpoint.
    return ASHAScheduler(stop_last_trials=False, time_attr="training_iteration", max_t=s.max_t or cfg.training.epochs,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)  # fmt: skip


def trial_dirname(trial: Any) -> str:
    """``trial_<id>``: Tune's default name repeats every sampled value and outgrows path limits."""
    return f"trial_{trial.trial_id}"


def _trainable(sweep: dict[str, Any], job: JobConfig) -> Any:
    from ray import tune

    from ray_jobs.tune_trials import planner_trial, train_trial

    if sweep["kind"] == "planner":
        # The trial's process plans (its bundle holds the planner's CPU, and a GPU share with ray.use_gpu);
        # one bundle per env actor it starts.
        planner = {"CPU": PLANNER_TRIAL_CPUS, **({"GPU": job.ray.gpus_per_worker} if job.ray.use_gpu else {})}
        bundles = [planner] + [{"CPU": sweep["cpus_per_actor"]}] * sweep["env_actors"]
        return tune.with_resources(tune.with_parameters(planner_trial, sweep=sweep),
                                   tune.PlacementGroupFactory(bundles))  # fmt: skip
    return tune.with_resources(tune.with_parameters(train_trial, sweep=sweep), {"CPU": TRAIN_TRIAL_CPUS})


# ---- running ------------------------------------------------------------------------------------------------


def run_sweep(
    space_ref: str,
    args: list[str],
    *,
    num_samples: int = 1,
    max_concurrent: int | None = None,
    search: str = "random",
    seed: int = 0,
    name: str | None = None,
    cpus_per_actor: float = 0.25,
) -> SweepOutcome:
    """Check, then run a sweep and report it (see the module docstring). Raises :class:`SpaceError`,
    ``ConfigError`` or :class:`PreflightError` before anything starts, :class:`SweepInterrupted` on Ctrl-C."""
    from ray_jobs.cluster import connect

    if search not in SEARCHERS:
        raise SpaceError(f"--search: expected one of {', '.join(SEARCHERS)}, got {search!r}")
    if num_samples < 1:
        raise SpaceError(f"--num-samples must be >= 1, got {num_samples}")
    space, cfg, job, extra = prepare(space_ref, args)
    _searcher(search, space, seed)  # optuna + grid fails here, before the cluster starts
    name = name or new_sweep_name(space)
    storage = storage_root(cfg, job.ray)
    sweep_dir = Path(storage) / name
    if "://" in storage:
        raise PreflightError(f"ray.storage_path={storage}: sweeps keep their state and results on a filesystem "
                             f"path (shared by every node on a cluster)")  # fmt: skip
    if sweep_dir.exists():
        raise PreflightError(
            f"sweep {name!r} already exists in {storage}; continue it with --resume {sweep_dir}"
        )
    connect(job.ray)
    from ray_jobs.train_preflight import check_gpus

    check_gpus(job.ray)
    concurrency = max_concurrent or default_concurrency(space, job, cpus_per_actor)
    if space.kind == "planner":
        # Tune places a trial's actors in the trial's placement group: each trial reserves its env actors.
        actors = cfg.eval.num_actors or _actors_per_trial(concurrency, cpus_per_actor)
        extra["env_actors"] = min(actors, cfg.eval.n_evals)
        extra["plan_overrides"] = [*extra["plan_overrides"], f"eval.num_actors={extra['env_actors']}"]
    tracker = tracking.open_tracker(job.mlflow, cfg.output_dir)
    params = {"space": {k: f"{d.kind}{list(d.args)}" for k, d in space.params.items()},
              "sweep": {"num_samples": num_samples, "max_concurrent": concurrency, "search": search, "seed": seed,
                        "metric": space.metric, "mode": space.mode, "scheduler": space.scheduler.name},
              "base": json.loads(cfg.model_dump_json()), **json.loads(job.model_dump_json())}  # fmt: skip
    tags = {"dinowm.kind": "sweep", "dinowm.tune.space": space.name, "env": cfg.env.name,
            "git_commit": tracking.git_commit(Path(__file__).parent), "checkpoint": extra.get("checkpoint")}  # fmt: skip
    tracker.start(name, params, tags)
    sweep_dir.mkdir(parents=True)
    shutil.copyfile(space.path, sweep_dir / SPACE_COPY)
    state = {
        "name": name, "kind": space.kind, "space": str(space.path), "keys": list(space.params),
        "metric": space.metric, "mode": space.mode, "num_samples": num_samples, "max_concurrent": concurrency,
        "search": search, "seed": seed, "config": cfg.model_dump_json(), "job": job.model_dump_json(),
        "ray": job.ray.model_dump_json(), "tracking_uri": tracker.uri, "parent_run_id": tracker.run_id,
        "sweep_dir": str(sweep_dir), "storage": storage, "trials_storage": str(sweep_dir / "trials"),
        "cpus_per_actor": cpus_per_actor, **extra,
    }  # fmt: skip
    _write_json(sweep_dir / SWEEP_FILE, state)
    log.info("sweep %s: %s (%d keys, %s search, %s) -> %s; MLflow run %s", name, space.path, len(space.params),
             search, space.scheduler.name, sweep_dir, tracker.run_id)  # fmt: skip
    return _fit(state, space, tracker, job, cfg, restore=False)


def _actors_per_trial(concurrency: int, cpus_per_actor: float) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int((cpus - concurrency * PLANNER_TRIAL_CPUS) / (concurrency * cpus_per_actor) + 1e-9))


def resume_sweep(ref: str, args: list[str] | None = None) -> SweepOutcome:
    """Continue an interrupted sweep: ``ref`` is its directory or its name (looked up in the default storage).
    Finished trials are kept; unfinished ones run again."""
    from ray import tune

    from ray_jobs.cluster import connect

    sweep_dir = _locate_sweep(ref, args or [])
    state = json.loads((sweep_dir / SWEEP_FILE).read_text())
    if (sweep_dir / "results.json").is_file():  # written once every trial has ended
        raise PreflightError(f"sweep {state['name']} has finished: its results are in {sweep_dir} (results.json, "
                             f"best/); start a new sweep to search again")  # fmt: skip
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise PreflightError(f"sweep {sweep_dir}: no Tune experiment state to resume (it stopped before its "
                             f"first trial started); start it again")  # fmt: skip
    full = load_space(sweep_dir / SPACE_COPY)
    space = full.without(set(full.params) - set(state["keys"]))  # the keys the command line fixed
    job = JobConfig.model_validate_json(state["job"])
    cfg = Config.model_validate_json(state["config"])
    connect(job.ray)
    tracker = tracking.RunTracker(state["tracking_uri"], job.mlflow.experiment)
    tracker.reopen(state["parent_run_id"])
    log.info("resuming sweep %s from %s", state["name"], sweep_dir)
    return _fit(state, space, tracker, job, cfg, restore=True)


def _locate_sweep(ref: str, args: list[str]) -> Path:
    path = Path(ref)
    if (path / SWEEP_FILE).is_file():
        return path.resolve()
    core, job_overrides = split_job_overrides(args)
    from dinowm_core.presets import load_config

    cfg, job = resolve_paths(load_config(core), load_job_config(job_overrides))
    found = Path(storage_root(cfg, job.ray)) / ref
    if (found / SWEEP_FILE).is_file():
        return found
    raise PreflightError(f"--resume {ref}: no sweep there (a sweep directory holds {SWEEP_FILE}; looked in "
                         f"{path.resolve()} and {found})")  # fmt: skip


def _fit(state: dict[str, Any], space: SearchSpace, tracker: Any, job: JobConfig, cfg: Config,
         *, restore: bool) -> SweepOutcome:  # fmt: skip
    from ray import tune

    from ray_jobs.tune_progress import SweepProgress

    trainable = _trainable(state, job)
    progress = SweepProgress(state, STATUS_EVERY_S)
    run_config = tune.RunConfig(name=state["name"], storage_path=state["storage"], callbacks=[progress],
                                verbose=0, failure_config=tune.FailureConfig(max_failures=0))  # fmt: skip
    if restore:
        tuner = tune.Tuner.restore(
            state["sweep_dir"], trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space.tune_domains(),
            tune_config=tune.TuneConfig(
                metric=state["metric"],
                mode=state["mode"],
                num_samples=state["num_samples"],
                max_concurrent_trials=state["max_concurrent"],
                scheduler=_scheduler(space, cfg),
                search_alg=_searcher(state["search"], space, state["seed"], state["max_concurrent"]),
                trial_dirname_creator=trial_dirname,
            ),  # fmt: skip
            run_config=run_config,
        )
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C, while Tune saves its state
        tracker.end("KILLED")
        raise SweepInterrupted(state["name"], state["sweep_dir"]) from None
    except BaseException:
        tracker.end("FAILED")
        raise
    if _unfinished_on_disk(state["sweep_dir"]):
        # Ctrl-C: Tune saves the experiment (running trials as unfinished), then stops the trials and returns as
        # if done. What it saved is what --resume continues from; the trials' MLflow runs stay open for it.
        tracker.end("KILLED")
        raise SweepInterrupted(state["name"], state["sweep_dir"])
    return finish(state, space, grid, tracker, job)


def _unfinished_on_disk(sweep_dir: str) -> int:
    """Trials that the saved experiment state shows unfinished (what ``Tuner.restore`` would run again)."""
    from ray.tune import ExperimentAnalysis

    return sum(t.status not in ("TERMINATED", "ERROR") for t in ExperimentAnalysis(sweep_dir).trials)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# ---- command line -------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    from ray_jobs.tune_space import list_spaces

    ap = argparse.ArgumentParser(
        prog="dinowm tune",
        description="Hyperparameter sweep on Ray Tune: training spaces train each trial on Ray Train (ASHA stops "
        "the worse ones); planner spaces evaluate one checkpoint per trial. Shipped spaces: "
        + ", ".join(list_spaces()),
    )
    ap.add_argument("space", nargs="?", help="a shipped space name or a .yaml file (omit with --resume)")
    ap.add_argument(
        "args", nargs="*", help="planner spaces: CKPT first; then overrides: data.path=... ray.*=..."
    )
    ap.add_argument(
        "--num-samples",
        type=_positive,
        default=1,
        help="samples drawn from the space (each grid value is crossed with every sample)",
    )
    ap.add_argument(
        "--max-concurrent",
        type=_positive,
        default=None,
        help="trials at once (default: as many as the cluster holds)",
    )
    ap.add_argument("--search", choices=SEARCHERS, default="random", help="random sampling, or Optuna's TPE")
    ap.add_argument("--seed", type=int, default=0, help="the search's seed")
    ap.add_argument("--name", default=None, help="the sweep's name (default tune-<space>-<time>-<hex>)")
    ap.add_argument("--resume", metavar="SWEEP", default=None,
                    help="continue an interrupted sweep (its directory or name); finished trials are kept")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    """0 done, 1 every trial failed, 2 bad input (nothing started), 130 interrupted (resume with --resume)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = parser()
    ns = ap.parse_args(argv)
    try:
        if ns.resume:
            args = [ns.space, *ns.args] if ns.space else ns.args
            outcome = resume_sweep(ns.resume, args)
        elif not ns.space:
            ap.error("give a search space (or --resume SWEEP)")
        else:
            outcome = run_sweep(ns.space, ns.args, num_samples=ns.num_samples, max_concurrent=ns.max_concurrent,
                                search=ns.search, seed=ns.seed, name=ns.name)  # fmt: skip
    except (ConfigError, PreflightError, LookupError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SweepInterrupted as e:
        print(f"\ninterrupted: sweep {e.name} keeps its finished trials in {e.sweep_dir}; continue it with "
              f"dinowm tune --resume {e.sweep_dir}", file=sys.stderr)  # fmt: skip
        return 130
    print(outcome.table, file=sys.stderr)
    summary = {"sweep": outcome.name, "sweep_dir": outcome.sweep_dir, "mlflow_run_id": outcome.parent_run_id,
               "best_trial": outcome.best.trial_id if outcome.best else None,
               "best_metric": outcome.best.metric if outcome.best else None, "best_dir": outcome.best_dir,
               "model_version": outcome.model_version,
               "recommended_trial": outcome.recommended.trial_id if outcome.recommended else None}  # fmt: skip
    if ns.json:
        print(json.dumps(summary))
    else:
        print(_closing_lines(outcome), file=sys.stderr)
    ok = outcome.best is not None
    return 0 if ok else 1


def _closing_lines(o: SweepOutcome) -> str:
    lines = [f"sweep {o.name}: {len(o.records)} trials; results, plots and best in {o.sweep_dir}"]
    if o.best is None:
        lines.append("no trial reported the metric: see the trials' errors above and in the sweep directory")
        return "\n".join(lines)
    lines.append(f"best: trial {o.best.trial_id}, {o.best.metric:.4g}")
    if o.recommended is not None and o.recommended is not o.best:
        lines.append(f"cheapest within the best's 95% CI: trial {o.recommended.trial_id}")
    if o.best_dir:
        lines.append(f"plan with it: dinowm plan {o.best_dir}    serve it: dinowm serve {o.best_dir}")
    if o.model_version:
        lines.append(f"registered as model version {o.model_version}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

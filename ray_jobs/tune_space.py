"""Search spaces for ``dinowm tune``: the declarative files under ``tune_spaces/``, loaded and checked.

A space file is YAML whose ``params`` are keyed by dotted config keys, the same keys as the command line's
overrides, each holding one distribution as Ray Tune names it::

    kind: train                       # train (each trial trains) or planner (each trial evaluates a checkpoint)
    metric: val/loss                  # what the sweep optimizes, and whether lower (min) or higher (max) is better
    mode: min
    base:                             # every trial starts from these (the command line's overrides come after)
      env: wall
      training.epochs: 8
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}   # or {name: fifo}; max_t = training.epochs
    params:
      training.predictor_lr: {loguniform: [1.0e-4, 2.0e-3]}
      predictor.depth: {choice: [2, 4, 6]}
      predictor.residual: {grid: [false, true]}      # every value, in every sample
      num_hist: {randint: [1, 4]}                    # 1, 2 or 3: the upper bound is excluded, as in tune.randint

Distributions: ``choice``, ``grid``, ``uniform``, ``quniform [lo, hi, q]``, ``loguniform``,
``qloguniform [lo, hi, q]``, ``randint``, ``qrandint [lo, hi, q]`` (randint/qrandint exclude ``hi``, as Tune).

:func:`check_space` validates a space against the config schema before any trial starts: every key and every
value a trial can draw (each bound, a point inside, every choice) must give a valid :class:`Config`, and so must every
combination of those values (all of them when there are at most :data:`MAX_COMBINATIONS`, else a fixed sample):
``planner.cem.topk`` above ``planner.cem.num_samples`` fails here, not in trial 7. Errors are
:class:`SpaceError` and name the file and the key.

This module does not import Ray; :meth:`SearchSpace.tune_domains` does, when a sweep builds Tune's space.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from dinowm_core.config import MODEL_KEYS, Config, ConfigError, format_errors
from dinowm_core.presets import read_yaml, split_overrides
from ray_jobs.job_config import JOB_SECTIONS

#: combinations of drawable values checked exhaustively; beyond, a fixed-seed sample of this many
MAX_COMBINATIONS = 1024
KINDS = ("train", "planner")
DISTRIBUTIONS = {
    # name: (number of arguments, which are the bounds' positions or None for a list of values)
    "choice": None,
    "grid": None,
    "uniform": 2,
    "quniform": 3,
    "loguniform": 2,
    "qloguniform": 3,
    "randint": 2,
    "qrandint": 3,
}
_FILE_KEYS = {"kind", "description", "metric", "mode", "base", "scheduler", "params", "env"}
_SCHEDULER_KEYS = {"name", "grace_period", "reduction_factor", "max_t"}


class SpaceError(ConfigError):
    """A search space cannot be used; the message names the file and the key."""


def spaces_dir() -> Path:
    """The spaces shipped with dinowm (``tune_spaces/`` next to the packages)."""
    import tune_spaces

    return Path(tune_spaces.__file__).resolve().parent


def list_spaces() -> list[str]:
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


@dataclass(frozen=True)
class Dist:
    """One distribution of a search space: ``kind`` and its arguments as written in the file."""

    kind: str
    args: tuple[Any, ...]

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    @property
    def is_log(self) -> bool:
        return self.kind in ("loguniform", "qloguniform")

    def drawable(self) -> list[Any]:
        """The values to validate: every listed value, or both bounds and a point inside a range (a value with
        a fractional part catches a continuous distribution on an integer key)."""
        if DISTRIBUTIONS[self.kind] is None:
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        if self.kind in ("randint", "qrandint"):
            return sorted({lo, hi - 1})
        # A third of the way rather than the middle: (2 + 6) / 2 = 4.0 would pass as an integer.
        inner = lo * (hi / lo) ** (1 / 3) if self.is_log else lo + (hi - lo) / 3
        return [lo, inner, hi]

    def tune_domain(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        return getattr(tune, self.kind)(*self.args) if self.kind != "choice" else tune.choice(list(self.args))


@dataclass
class SchedulerSpec:
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None  # None: training.epochs (one report per epoch)


@dataclass
class SearchSpace:
    """A loaded space file. ``base`` are dotted overrides applied before the command line's and the trial's."""

    name: str
    path: Path
    kind: Literal["train", "planner"]
    metric: str
    mode: Literal["min", "max"]
    params: dict[str, Dist]
    base: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    description: str = ""
    env: str | None = None  # planner spaces: the env whose checkpoints they tune

    def base_overrides(self) -> list[str]:
        return [as_override(k, v) for k, v in self.base.items()]

    def tune_domains(self) -> dict[str, Any]:
        """``{dotted key: Tune domain}``: the Tuner's ``param_space``."""
        return {key: dist.tune_domain() for key, dist in self.params.items()}

    def trial_overrides(self, trial_config: dict[str, Any]) -> list[str]:
        """A trial's sampled values as overrides, in the space's key order."""
        return [as_override(k, trial_config[k]) for k in self.params if k in trial_config]

    def without(self, keys: set[str]) -> SearchSpace:
        """This space with ``keys`` no longer searched (the command line fixed them)."""
        return SearchSpace(
            **{**self.__dict__, "params": {k: d for k, d in self.params.items() if k not in keys}}
        )

    def log_keys(self) -> set[str]:
        return {k for k, d in self.params.items() if d.is_log}


def as_override(key: str, value: Any) -> str:
    """``key=value`` whose value reads back as the same YAML value (JSON is YAML)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


# ---- loading --------------------------------------------------------------------------------------------


def _fail(path: Path, msg: str) -> SpaceError:
    return SpaceError(f"search space {path}: {msg}")


def _parse_dist(path: Path, key: str, spec: Any) -> Dist:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _fail(path, f"{key}: expected one distribution such as {{choice: [1, 2]}} or "
                          f"{{loguniform: [1.0e-4, 1.0e-2]}}, got {spec!r}")  # fmt: skip
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise _fail(path, f"{key}: unknown distribution {kind!r} (choices: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list) or not args:
        raise _fail(path, f"{key}: {kind} takes a non-empty list, got {args!r}")
    n = DISTRIBUTIONS[kind]
    if n is not None:
        if len(args) != n or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            shape = "[low, high]" if n == 2 else "[low, high, q]"
            raise _fail(path, f"{key}: {kind} takes {n} numbers {shape}, got {args!r}")
        lo, hi = args[0], args[1]
        if not lo < hi:
            raise _fail(path, f"{key}: {kind} needs low < high, got {args!r}")
        if kind.startswith(("loguniform", "qlog")) and lo <= 0:
            raise _fail(path, f"{key}: {kind} needs a positive low bound, got {lo}")
        if kind in ("randint", "qrandint") and not all(isinstance(a, int) for a in args):
            raise _fail(path, f"{key}: {kind} takes integers, got {args!r}")
    return Dist(kind, tuple(args))


def resolve_space_path(name_or_path: str | Path) -> Path:
    """``train_wall`` -> the shipped ``tune_spaces/train_wall.yaml``; a path to a ``.yaml`` file as is."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise SpaceError(f"search space {path}: no such file")
        return path.resolve()
    shipped = spaces_dir() / f"{text}.yaml"
    if not shipped.is_file():
        raise SpaceError(f"search space {text!r}: no such space (shipped: {', '.join(list_spaces())}; "
                         f"or give a path to a .yaml file)")  # fmt: skip
    return shipped


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Parse a space file (structure only; :func:`check_space` checks it against a config)."""
    path = resolve_space_path(name_or_path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    unknown = sorted(set(raw) - _FILE_KEYS)
    if unknown:
        raise _fail(
            path, f"unknown top-level key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_FILE_KEYS))})"
        )
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(path, f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    mode = raw.get("mode", "min" if kind == "train" else "max")
    if mode not in ("min", "max"):
        raise _fail(path, f"mode: expected min or max, got {mode!r}")
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise _fail(path, "params: expected a mapping of dotted config keys to distributions")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise _fail(path, f"base: expected a mapping of dotted config keys, got {base!r}")
    sched_raw = raw.get("scheduler") or {}
    if not isinstance(sched_raw, dict) or set(sched_raw) - _SCHEDULER_KEYS:
        raise _fail(path, f"scheduler: expected a mapping with keys among {', '.join(sorted(_SCHEDULER_KEYS))}, "
                          f"got {sched_raw!r}")  # fmt: skip
    scheduler = SchedulerSpec(**sched_raw)
    if scheduler.name not in ("asha", "fifo"):
        raise _fail(path, f"scheduler.name: expected asha or fifo, got {scheduler.name!r}")
    if kind == "planner" and scheduler.name == "asha" and "scheduler" in raw:
        raise _fail(
            path, "scheduler: a planner trial reports once (its evaluation); early stopping needs a series"
        )
    if kind == "planner":
        scheduler = SchedulerSpec(name="fifo")
    params = {str(k): _parse_dist(path, str(k), v) for k, v in params_raw.items()}
    return SearchSpace(
        name=path.stem,
        path=path,
        kind=kind,
        metric=str(raw.get("metric") or ("val/loss" if kind == "train" else "plan/success_rate")),
        mode=mode,
        params=params,
        base={str(k): v for k, v in base.items()},
        scheduler=scheduler,
        description=str(raw.get("description") or ""),
        env=raw.get("env"),
    )


# ---- checking against the config schema -----------------------------------------------------------------


def _check_key_kind(space: SearchSpace, key: str) -> None:
    if key.split(".")[0] in JOB_SECTIONS:
        raise _fail(space.path, f"{key}: a job setting (where trials run), not a hyperparameter; set it on "
                                f"the command line")  # fmt: skip
    if space.kind == "planner":
        fixed = [m for m in MODEL_KEYS if key == m or key.startswith(f"{m}.") or m.startswith(f"{key}.")]
        if fixed or key in ("env", "encoder", "predictor", "decoder"):
            raise _fail(space.path, f"{key}: decides the model's shapes; a planner sweep evaluates one fixed "
                                    f"checkpoint, so it cannot change (tune it in a training space)")  # fmt: skip
        if key.startswith("data.") or key.startswith("training."):
            raise _fail(space.path, f"{key}: a training setting; a planner sweep does not train")


def _errors(tree: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        Config.model_validate(tree)
    except ValidationError as e:
        return e.errors()
    return []


def _about(key: str, err: dict[str, Any]) -> bool:
    """Whether a schema error is about ``key`` alone: a bad value of that field or an unknown key on its path.
    Checks across fields (model validators: ``topk <= num_samples``) are left to the combinations."""
    loc = ".".join(str(p) for p in err["loc"])
    on_path = key == loc or key.startswith(f"{loc}.")
    return on_path and (err["type"] != "value_error" or key == loc)


def _problem(errors: list[dict[str, Any]]) -> str:
    return format_errors(errors).removeprefix("invalid config:\n  ")


def _with(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(tree)
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


def check_space(space: SearchSpace, cfg: Config) -> None:
    """Every value a trial can draw, alone and in combination, gives a valid config on top of ``cfg`` (the
    base config the trials start from). Raises :class:`SpaceError` naming the file and the key."""
    tree = json.loads(cfg.model_dump_json())
    for key in space.params:
        _check_key_kind(space, key)
    values = {key: dist.drawable() for key, dist in space.params.items()}
    for key, options in values.items():
        # A path that does not exist in the config (a typo) fails on its first value, named by the schema.
        for value in options:
            errors = [e for e in _errors(_with(tree, {key: value})) if _about(key, e)]
            if errors:
                raise _fail(space.path, f"{key}={value!r} gives an invalid config: {_problem(errors)}")
    keys = list(values)
    total = math.prod(len(v) for v in values.values())
    if total <= MAX_COMBINATIONS:
        combos = itertools.product(*(values[k] for k in keys))
    else:
        rng = random.Random(0)
        combos = (tuple(rng.choice(values[k]) for k in keys) for _ in range(MAX_COMBINATIONS))
    for combo in combos:
        errors = _errors(_with(tree, dict(zip(keys, combo, strict=True))))
        if errors:
            problem = _problem(errors)
            shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo, strict=True))
            raise _fail(space.path, f"the combination {shown} gives an invalid config: {problem} (narrow the "
                                    f"ranges so that every combination is valid)")  # fmt: skip


def fixed_by_command_line(space: SearchSpace, overrides: list[str]) -> set[str]:
    """The searched keys that the command line sets (they are fixed for the sweep: the command line wins)."""
    return {key for key, _ in split_overrides(overrides) if key in space.params}

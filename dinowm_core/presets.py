"""Building a :class:`~dinowm_core.config.Config` from the YAML presets under ``conf/`` and dotted overrides.

Presets are grouped like the reference DINO-WM (``env=``, ``encoder=``, ``predictor=``, ``decoder=``,
``planner=``); every other ``key=value`` is a dotted override, its value read as YAML::

    load_config(["env=wall", "frameskip=5", "num_hist=1", "predictor.depth=4"])

Planning runs add a per-env preset between the checkpoint's config and the command line (reference sections
5.1, 5.6; docs/reference.md). The reference plans with one Hydra file per env (``conf/plan_<env>.yaml``;
section 5.6's table, section 8 items 11-12). Ours are ``conf/plan/<env>.yaml``: flat mappings of dotted config
keys, e.g.::

    planner.objective.alpha: 0.0
    planner.cem.opt_steps: 10

:func:`plan_config` applies the preset of the evaluated env on top of the checkpoint's config and *before* the
user's overrides, so ``planner.objective.alpha=1`` on the command line still wins. The applied preset is recorded
in ``cfg.presets["plan"]`` and logged with its keys.

It also resolves ``eval.goal_H`` (:func:`resolve_goal_H`). The reference uses one number for the goal distance
and the planning horizon (section 5.1); ours keeps ``planner.horizon`` and lets ``goal_H`` follow it unless set.
An open-loop plan (cem, gd) is executed whole and never replanned, so an explicit goal_H that differs from the
horizon would end the episode short of (or past) a dset goal: that is a config error.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from dinowm_core.config import Config, ConfigError

log = logging.getLogger(__name__)

GROUPS = ("env", "encoder", "predictor", "decoder", "planner")
OPEN_LOOP_PLANNERS = ("cem", "icem", "mppi", "gd", "cem_discrete")
#: ``planner=fast`` is per env: ``conf/planner_fast/<env>.yaml``, else ``conf/planner_fast/default.yaml``
FAST_PLANNER = "fast"
#: goal sources whose goal lies goal_H model steps ahead (random_state / file goals have no such distance)
DISTANCE_GOAL_SOURCES = ("dset", "random_action")
#: ``presets.plan`` of a checkpoint exported by a planner sweep (``ray_jobs.tune_finish``): "sweep:<name>/<trial>"
TUNED_PLAN_PREFIX = "sweep:"


# ---- preset files ---------------------------------------------------------------------------------------


def conf_dir() -> Path:
    """The preset directory: ``$DINOWM_CONF_DIR`` or ``conf/`` next to the package."""
    env = os.environ.get("DINOWM_CONF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "conf"


def list_presets(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _load_preset(group: str, name: str) -> dict[str, Any]:
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(list_presets(group)) or "none"
        raise ConfigError(f"{group}={name}: no such preset (choices: {choices})")
    return read_yaml(path)


# ---- overrides --------------------------------------------------------------------------------------------


def split_overrides(overrides: list[str] | None) -> list[tuple[str, str]]:
    """``["a.b=1", ...]`` -> ``[("a.b", "1"), ...]``; an item without ``=`` or with an empty key fails."""
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        pairs.append((key, value))
    return pairs


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {e}") from None


def set_dotted(tree: dict[str, Any], key: str, text: str) -> None:
    """Set ``tree[a][b] = value`` for ``key="a.b"``; ``text`` is read as YAML (``8``, ``null``, ``[0, 1]``)."""
    value = _parse_value(key, text)
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{'.'.join(parts[: i + 1])}' is not a group of keys")
        node = child
    node[parts[-1]] = value


def config_dict(overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge presets and overrides into a plain dict (not yet validated)."""
    pairs = split_overrides(overrides)
    if base is None:
        tree = read_yaml(conf_dir() / "config.yaml")
        defaults = tree.pop("defaults", {})
    else:
        tree = copy.deepcopy(base)
        defaults = {}
    chosen = dict(defaults)
    # Group selections (env=wall) first, so dotted overrides (env.kwargs.x=1) apply on top.
    for key, value in pairs:
        if key in GROUPS:
            chosen[key] = value
    for group, name in chosen.items():
        if group not in GROUPS:
            raise ConfigError(f"defaults: unknown group {group!r} (groups: {', '.join(GROUPS)})")
        if not (group == "planner" and str(name) == FAST_PLANNER):
            tree[group] = _load_preset(group, str(name))
    if str(chosen.get("planner")) == FAST_PLANNER:  # after env=..., whatever the order on the command line
        env = str((tree.get("env") or {}).get("name", ""))
        tree["planner"], chosen["planner"] = fast_planner(env)
    if chosen:
        tree["presets"] = {**tree.get("presets", {}), **{k: str(v) for k, v in chosen.items()}}
    for key, value in pairs:
        if key not in GROUPS:
            set_dotted(tree, key, value)
    return tree


def load_config(overrides: list[str] | None = None) -> Config:
    """Build a validated config from the presets under ``conf/`` and ``key=value`` overrides."""
    return Config.from_dict(config_dict(overrides))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` overrides (and ``group=preset`` selections) to an existing config."""
    return Config.from_dict(config_dict(overrides, base=json.loads(cfg.model_dump_json())))


# ---- planning presets -------------------------------------------------------------------------------------


def fast_planner(env: str) -> tuple[dict[str, Any], str]:
    """``planner=fast``: the cheapest planner measured to match full CEM on ``env`` (BENCHMARKS.md, Planners)
    -> (the planner section, its name as recorded in ``cfg.presets["planner"]``). An env without a file of its
    own gets ``default.yaml``, a conservative iCEM not measured there."""
    path = conf_dir() / "planner_fast" / f"{env}.yaml"
    name = f"{FAST_PLANNER}/{env}"
    if not path.is_file():
        path, name = conf_dir() / "planner_fast" / "default.yaml", f"{FAST_PLANNER}/default"
        if not path.is_file():
            raise ConfigError(f"planner=fast: no {env}.yaml and no default.yaml in {path.parent}")
        log.info("planner=fast: no measured preset for env %r, using %s (not measured there)", env, path)
    return read_yaml(path), name


def preset_path(env: str) -> Path:
    return conf_dir() / "plan" / f"{env}.yaml"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def preset_overrides(env: str) -> dict[str, Any]:
    """The dotted ``key: value`` pairs of ``conf/plan/<env>.yaml`` (empty when the env has none)."""
    path = preset_path(env)
    if not path.is_file():
        return {}
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of dotted config keys")
    return _flatten(tree)


def _override(key: str, value: Any) -> str:
    # JSON is valid YAML, and the overrides parser reads values as YAML: strings, floats and lists survive.
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def plan_config(base: Config, overrides: list[str]) -> Config:
    """``base`` (the checkpoint's config) + the env's planning preset + ``overrides`` (they win), resolved.

    Raises :class:`~dinowm_core.config.ConfigError` (a ``ValueError``) naming the offending key.
    """
    user = dict(split_overrides(overrides))
    env = str(user.get("env", base.env.name)).strip()
    tuned = base.presets.get("plan", "")
    # A checkpoint exported by a planner sweep carries the planner settings it found: the env preset would
    # undo them.
    preset = {} if tuned.startswith(TUNED_PLAN_PREFIX) else preset_overrides(env)
    # Group choices (`planner=cem`) are applied before dotted keys, so a preset's planner.name would beat the
    # user's choice: drop every preset key the command line sets, directly or through its group.
    won = sorted(k for k in preset if k in user or (k == "planner.name" and "planner" in user))
    items = [_override(k, v) for k, v in preset.items() if k not in won]
    if preset:
        items.append(f"presets.plan={env}")
    cfg = apply_overrides(base, [*items, *overrides])
    if preset:
        log.info("planning preset %s: %s%s", preset_path(env), ", ".join(items[:-1]),
                 f" (command line wins for {', '.join(won)})" if won else "")  # fmt: skip
    elif tuned.startswith(TUNED_PLAN_PREFIX):
        log.info("planner settings of %s (found by a sweep), no env preset on top", tuned)
    else:
        log.info(
            "no planning preset for env %r (%s): checkpoint config and overrides only", env, preset_path(env)
        )
    return resolve_goal_H(cfg)


def check_goal_H(cfg: Config) -> None:
    """An explicit goal_H must equal planner.horizon for an open-loop planner on a goal goal_H steps ahead."""
    e, p = cfg.eval, cfg.planner
    if e.goal_H is None or e.goal_H == p.horizon or e.policy != "planner":
        return
    if p.name in OPEN_LOOP_PLANNERS and e.goal_source in DISTANCE_GOAL_SOURCES:
        raise ConfigError(
            f"eval.goal_H={e.goal_H} != planner.horizon={p.horizon}: open-loop planner {p.name!r} executes one "
            f"{p.horizon}-step plan, so it would stop short of (or run past) a goal {e.goal_H} model steps "
            f"ahead. Set both to the same value (the reference uses horizon = goal_H), leave eval.goal_H unset "
            f"(eval.goal_H=null: it follows planner.horizon), or use an MPC planner"
        )


def resolve_goal_H(cfg: Config) -> Config:
    """``cfg`` with ``eval.goal_H`` filled in (``None`` -> ``planner.horizon``), after :func:`check_goal_H`."""
    check_goal_H(cfg)
    if cfg.eval.goal_H is not None:
        return cfg
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"goal_H": cfg.planner.horizon})})

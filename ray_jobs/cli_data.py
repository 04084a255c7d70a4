"""`dinowm data ...`: dataset generation, inspection, verification, import and feature caching.

Bad input (unknown env or policy, an existing output, a corrupted dataset) prints one ``error:`` line and exits
with code 2 (``verify`` reports a damaged dataset as ``problem:`` lines and exit 1); every writer works in a temp / ``.partial`` directory, so nothing half-written is left as a dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer

data_app = typer.Typer(help="Datasets: generate, info, verify, import-dino-wm, encode.", no_args_is_help=True)


def _fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from dinowm_core.data.importers import UnsafePickleError
    from dinowm_core.data.store import DatasetError

    return (DatasetError, UnsafePickleError, ValueError, FileExistsError, FileNotFoundError)


@data_app.command("generate")
def generate_cmd(
    env: str = typer.Option(
        ..., help="env name: wall, pusht, point_maze, reacher, rope, granular, four_rooms, memory_maze"
    ),
    episodes: int = typer.Option(..., min=1),
    steps: int = typer.Option(
        ...,
        min=1,
        help="steps (stored frames) per episode; warns below one training window of the env's defaults",
    ),
    out: Path = typer.Option(..., help="output dataset directory (must not exist)"),
    seed: int = typer.Option(0),
    workers: int = typer.Option(1, min=1, help="worker processes (the dataset does not depend on it)"),
    img_size: int = typer.Option(64, min=1),
    policy: str = typer.Option(
        "random",
        help="random | sticky_random (wall, point_maze, pusht, reacher) | noisy_goal (wall, point_maze, reacher) "
        "| pusht_push | four_rooms_random, "
        "four_rooms_explore, four_rooms_bfs, two_rooms_bfs (four_rooms) | explore (memory_maze); "
        "a:3+b:1 mixes policies, one per episode with those odds (e.g. random:3+noisy_goal:1)",
    ),
    episodes_per_shard: int = typer.Option(0, min=0, help="0 = automatic"),
    env_kwarg: list[str] = typer.Option(
        [], help="KEY=VALUE passed to the env constructor (repeatable; values read as YAML), e.g. layout=3x7"
    ),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Roll a policy in an env and write a dataset (resumable: rerun the same command after an interruption).

    Ctrl-C keeps the finished shards in ``<out>.partial``, says so in one line and exits with 130.
    """
    from dinowm_core.data.generate import GenerationInterrupted, generate
    from dinowm_core.data.policies import check_policy
    from dinowm_core.envs.base import ENV_IDS

    if env not in ENV_IDS:
        _fail(f"unknown env {env!r} (choices: {', '.join(ENV_IDS)})")
    try:
        check_policy(policy, env)
    except ValueError as e:
        _fail(str(e))
    env_kwargs = _env_kwargs(env_kwarg)
    _warn_short_episodes(env, steps)
    try:
        path = generate(env, episodes, steps, out, seed, workers, img_size, policy,
                        episodes_per_shard=episodes_per_shard, env_kwargs=env_kwargs,
                        progress=progress)  # fmt: skip
    except (*_user_errors(), ImportError) as e:
        _fail(str(e))
    except GenerationInterrupted as e:
        typer.secho(str(e), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    typer.echo(f"wrote {path}")


def _env_kwargs(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"--env-kwarg {pair!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _warn_short_episodes(env: str, steps: int) -> None:
    """A warning, not a refusal: a config with a smaller frameskip / num_hist may still train on the episodes
    (only 1 step fits no config, since a window has at least two frames); training's preflight decides."""
    from dinowm_core.data.windows import window_requirement, window_steps
    from dinowm_core.presets import load_config

    cfg = load_config([f"env={env}"])
    if steps < window_steps(cfg):
        fits = "no training config" if steps < 2 else "training only with a lower frameskip/num_hist"
        typer.secho(f"warning: --steps {steps}: with the {env} defaults {window_requirement(cfg)}; these "
                    f"episodes fit {fits}: generate longer episodes", fg=typer.colors.YELLOW, err=True)  # fmt: skip


def _summary(manifest: dict[str, Any], path: Path) -> str:
    lengths = manifest["episode_lengths"]
    norm = manifest["normalization"]
    size = sum(m["bytes"] for m in manifest["files"].values())
    lines = [
        f"dataset      {path}",
        f"env          {manifest['env']['name']} (action_scale {manifest['env'].get('action_scale', 1.0)})",
        f"episodes     {manifest['num_episodes']}  steps {manifest['num_steps']}  "
        f"length min/mean/max {min(lengths)}/{sum(lengths) / len(lengths):.1f}/{max(lengths)}",
        f"image        {manifest['spaces']['image']['shape']} uint8",
        *(f"{k:<12} dim {manifest['spaces'][k]['shape'][0]} {manifest['spaces'][k]['dtype']}  "
          f"mean {_fmt(norm[k]['mean'])} std {_fmt(norm[k]['std'])}" for k in ("action", "proprio", "state")),
        f"generator    {json.dumps(manifest.get('generator', {}), sort_keys=True)}",
        f"files        {len(manifest['files'])}  {size / 1e6:.1f} MB  ({size / max(manifest['num_steps'], 1):.0f} B/frame)",
    ]  # fmt: skip
    if manifest.get("splits"):
        lines.append("splits       " + ", ".join(f"{k} {len(v)}" for k, v in manifest["splits"].items()))
    return "\n".join(lines)


def _fmt(values: list[float], limit: int = 6) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


@data_app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="dataset directory"),
    json_out: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Describe a dataset."""
    from dinowm_core.data.store import TrajectoryStore

    try:
        store = TrajectoryStore(path)
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(json.dumps(store.manifest, indent=2) if json_out else _summary(store.manifest, path))


@data_app.command("verify")
def verify_cmd(path: Path = typer.Argument(..., help="dataset directory")) -> None:
    """Recompute every checksum and decode every shard.

    Exit 0 when the dataset is intact; exit 1 with one ``problem:`` line each when anything is damaged or
    missing (an unreadable or absent manifest included); exit 2 for a usage error (``path`` is not a directory).
    """
    from dinowm_core.data.integrity import verify_dataset
    from dinowm_core.data.store import DatasetError, read_manifest

    if not path.is_dir():
        _fail(f"{path}: no such dataset directory")
    try:
        problems = verify_dataset(path, read_manifest(path))
    except DatasetError as e:
        problems = [str(e)]
    for p in problems:
        typer.secho(f"problem: {p}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {path}")


@data_app.command("import-dino-wm")
def import_cmd(
    src: Path = typer.Argument(..., help="reference dataset folder (e.g. $DATASET_DIR/wall_single)"),
    env: str = typer.Option(..., help="layout: pusht, point_maze, wall, rope, granular"),
    out: Path = typer.Option(..., help="output dataset directory (must not exist)"),
) -> None:
    """Convert an original DINO-WM dataset (reference section 3.2) into a dataset directory."""
    from dinowm_core.data.importers import import_dino_wm

    try:
        manifest = import_dino_wm(env, src, out)
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(f"wrote {out} ({manifest['num_episodes']} episodes, {manifest['num_steps']} steps)")


@data_app.command("encode")
def encode_cmd(
    path: Path = typer.Argument(..., help="dataset directory"),
    encoder: str = typer.Option("dinov2_vits14", help="encoder name (see encoder presets)"),
    weights: str | None = typer.Option(None, help="weights file (default: local caches)"),
    img_size: int = typer.Option(224, help="model image size; DINOv2 input is img_size // 16 * 14"),
    batch_size: int = typer.Option(64, min=1),
    pretrained: bool = typer.Option(True, help="false = random weights (tests)"),
) -> None:
    """Cache frozen-encoder patch tokens for every frame beside the dataset."""
    from dinowm_core.data.features import encode_dataset

    try:
        cache = encode_dataset(path, encoder, weights=weights, img_size=img_size, batch_size=batch_size,
                               pretrained=pretrained)  # fmt: skip
    except (*_user_errors(), ImportError) as e:
        _fail(str(e))
    typer.echo(f"wrote {cache}")

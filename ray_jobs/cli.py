"""The `dinowm` command line."""

from __future__ import annotations

import json
import logging
import sys
from typing import NoReturn

import typer

from ray_jobs.cli_data import data_app
from ray_jobs.cli_import import import_checkpoint_cmd
from ray_jobs.cli_runs import runs_app, train_cmd
from ray_jobs.cli_serve import serve_cmd
from ray_jobs.cli_tune import tune_cmd

app = typer.Typer(
    help="DINO-WM world models: build, train, plan and serve. Overrides are Hydra-style key=value.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.command("train")(train_cmd)
app.command("serve")(serve_cmd)
app.command("tune")(tune_cmd)
app.command("import-checkpoint")(import_checkpoint_cmd)

OVERRIDES = typer.Argument(None, help="config overrides: env=wall frameskip=5 predictor.depth=4 ...")


def _fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load(overrides: list[str] | None):
    from dinowm_core.config import ConfigError
    from dinowm_core.presets import load_config

    try:
        return load_config(overrides or [])
    except ConfigError as e:
        _fail(str(e))


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command("config")
def config_cmd(
    overrides: list[str] | None = OVERRIDES,
    job: bool = typer.Option(False, "--job", help="print the job settings (ray.*, mlflow.*) instead"),
) -> None:
    """Print the resolved model config (or, with --job, the job settings) as JSON."""
    from dinowm_core.config import ConfigError
    from ray_jobs.job_config import load_run_config

    try:
        cfg, job_cfg = load_run_config(overrides or [])
    except ConfigError as e:
        _fail(str(e))
    typer.echo(job_cfg.model_dump_json(indent=2) if job else cfg.to_json())


@app.command("model")
def model_cmd(
    overrides: list[str] | None = OVERRIDES,
    json_out: bool = typer.Option(False, "--json", help="machine-readable summary"),
) -> None:
    """Build a world model from the config and print its summary (parameters, shapes)."""
    from dinowm_core import build_world_model
    from dinowm_core.models.summary import model_summary

    cfg = _load(overrides)
    try:
        wm = build_world_model(cfg)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    summary = model_summary(wm)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(summary["text"])


@app.command("quickstart")
def quickstart_cmd(
    overrides: list[str] | None = OVERRIDES,
    output_dir: str = typer.Option("outputs/quickstart", "--output-dir", "-o", help="where results go"),
    quick: bool = typer.Option(False, "--quick", help="tiny sizes: a one-minute smoke run"),
    fresh: bool = typer.Option(
        False, "--fresh", help="remove the output dir's stage outputs first (no reuse)"
    ),
) -> None:
    """Generate data, train with Ray Train + MLflow, plan through the planning service with Ray env actors,
    write a report: offline, on a CPU. Finished stages are reused unless --fresh."""
    from dinowm_core.config import ConfigError
    from ray_jobs import quickstart
    from ray_jobs.train_preflight import PreflightError

    try:
        quickstart.run(output_dir, overrides or [], quick=quick, fresh=fresh)
    except (ConfigError, PreflightError, FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.command("plan")
def plan_cmd(
    ckpt: str = typer.Argument(
        ...,
        help="checkpoint directory, runs:/ID (or runs:/ID/checkpoint), models:/NAME/VERSION or @ALIAS, or a run name",
    ),
    overrides: list[str] | None = OVERRIDES,
    json_out: bool = typer.Option(
        False, "--json", help="print the results JSON to stdout (the output dir goes to stderr)"
    ),
    use_ray: bool = typer.Option(False, "--ray/--no-ray", help="episodes in Ray env actors, or in-process"),
    planner_actor: bool = typer.Option(
        False, "--planner-actor", help="with --ray: the model in a planner actor"
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="output dir (default output_dir/plan/<time>)"),
    serve_url: str | None = typer.Option(
        None, "--serve-url", help="plan through the planning service at this URL (dinowm serve)"
    ),
) -> None:
    """Evaluate planning with a checkpoint: success rate (95% CI), distances, videos, results.json."""
    from dinowm_core.config import ConfigError
    from dinowm_core.training.checkpoint import CheckpointError
    from ray_jobs.evaluate import plan_checkpoint, summary_line

    try:
        result, _, out_dir = plan_checkpoint(ckpt, overrides or [], use_ray=use_ray, planner_actor=planner_actor,
                                             out=out, serve_url=serve_url)  # fmt: skip
    except (ConfigError, CheckpointError, FileNotFoundError, LookupError, ValueError) as e:
        _fail(str(e))
    if json_out:
        typer.echo(f"results in {out_dir}", err=True)  # stdout stays one JSON document
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_out else summary_line(result, out_dir))


@app.command("memory-eval")
def memory_eval_cmd(
    ckpt: str = typer.Argument(
        ...,
        help="a four_rooms checkpoint: directory, runs:/ID, models:/NAME/VERSION or @ALIAS, or a run name",
    ),
    overrides: list[str] | None = OVERRIDES,
    out: str | None = typer.Option(
        None, "--out", "-o", help="output dir (default output_dir/memory_eval/<time>)"
    ),
    episodes: int | None = typer.Option(None, "--episodes", "-n", min=1, help="episodes per grid cell"),
    in_process: bool = typer.Option(
        False, "--in-process", help="build episodes in this process, not Ray actors"
    ),
    json_out: bool = typer.Option(False, "--json", help="print the results' task summaries as JSON"),
) -> None:
    """Memory evaluation on four_rooms: object recall, colour and sequence memory, loop closure, error vs
    horizon, planning success (memory_eval.* keys), each with episode counts and 95% intervals."""
    from dinowm_core.config import ConfigError
    from dinowm_core.training.checkpoint import CheckpointError
    from ray_jobs.memory_eval import run, summary_lines

    try:
        result, out_dir = run(ckpt, overrides or [], use_ray=not in_process, out=out, episodes=episodes)
    except (ConfigError, CheckpointError, FileNotFoundError, LookupError, ValueError) as e:
        _fail(str(e))
    if json_out:
        typer.echo(f"results in {out_dir}", err=True)
        typer.echo(json.dumps(result["tasks"], indent=2))
    else:
        typer.echo("\n".join([*summary_lines(result), f"results in {out_dir}"]))


if __name__ == "__main__":
    app()

"""The `dinowm` command line."""

from __future__ import annotations

import json
import logging
import sys

import typer

from ray_jobs.cli_data import data_app

app = typer.Typer(
    help="DINO-WM world models: build, train, plan and serve. Overrides are Hydra-style key=value.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")

OVERRIDES = typer.Argument(None, help="config overrides: env=wall frameskip=5 predictor.depth=4 ...")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load(overrides: list[str] | None):
    from dinowm_core.config import ConfigError, load_config

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
def config_cmd(overrides: list[str] | None = OVERRIDES) -> None:
    """Print the resolved config as JSON."""
    cfg = _load(overrides)
    typer.echo(cfg.to_json())


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
) -> None:
    """Run the end-to-end tour on embedded defaults (offline, CPU)."""
    from dinowm_core.config import ConfigError
    from ray_jobs import quickstart

    try:
        quickstart.run(output_dir, overrides or [])
    except (ConfigError, FileNotFoundError, ValueError) as e:
        _fail(str(e))


if __name__ == "__main__":
    app()

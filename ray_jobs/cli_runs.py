"""`dinowm train` and `dinowm runs ...`: Ray Train runs and their MLflow records."""

from __future__ import annotations

import json

import typer

runs_app = typer.Typer(help="Training runs recorded in MLflow.", no_args_is_help=True)

_URI = typer.Option(
    None, "--tracking-uri", help="default: $MLFLOW_TRACKING_URI or <output-dir>/mlflow/mlflow.db"
)
_EXPERIMENT = typer.Option("dinowm", "--experiment", "-e")
_OUTPUT_DIR = typer.Option("outputs", "--output-dir", "-o", help="where the embedded MLflow store lives")


def train_cmd(
    overrides: list[str] | None = typer.Argument(
        None, help="config overrides; plus resume=RUN|DIR, run_name=NAME"
    ),
) -> None:
    """Train on Ray Train (embedded local cluster unless ray.address / $RAY_ADDRESS is set), tracked in MLflow."""
    from ray_jobs.train import main

    code = main(list(overrides or []))
    if code:
        raise typer.Exit(code)


def _uri(uri: str | None, output_dir: str) -> str:
    from ray_jobs.tracking import tracking_uri

    return tracking_uri(uri, output_dir)


@runs_app.command("list")
def list_cmd(
    limit: int = typer.Option(20, "--limit", "-n"),
    experiment: str = _EXPERIMENT,
    tracking_uri: str | None = _URI,
    output_dir: str = _OUTPUT_DIR,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Recent runs: name, status, key metrics, checkpoint."""
    from ray_jobs.runs import list_runs

    rows = list_runs(_uri(tracking_uri, output_dir), experiment, limit)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'name':<36} {'status':<9} {'start':<16} {'epoch':>5} {'step':>7} {'val/loss':>9}  checkpoint"
    )
    for r in rows:
        m = r["metrics"]
        val = f"{m['val/loss']:.4g}" if "val/loss" in m else "-"
        typer.echo(f"{r['name']:<36} {r['status']:<9} {r['start']:<16} {int(m.get('epoch', 0)):>5} "
                   f"{int(m.get('step', 0)):>7} {val:>9}  {r['checkpoint'] or '-'}")  # fmt: skip


@runs_app.command("show")
def show_cmd(
    run: str = typer.Argument(..., help="run name or MLflow run id"),
    experiment: str = _EXPERIMENT,
    tracking_uri: str | None = _URI,
    output_dir: str = _OUTPUT_DIR,
) -> None:
    """One run's status, tags, latest metrics and artifacts (JSON)."""
    from ray_jobs.runs import show_run

    try:
        typer.echo(json.dumps(show_run(_uri(tracking_uri, output_dir), experiment, run), indent=2))
    except LookupError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@runs_app.command("model")
def model_cmd(
    ref: str = typer.Argument(
        ...,
        help="models:/NAME/VERSION or /NAME@ALIAS, NAME (latest version), runs:/ID (or runs:/ID/checkpoint), a run name",
    ),
    dst: str | None = typer.Option(
        None, "--dst", help="cache directory (default <output-dir>/models); reused when already downloaded"
    ),
    experiment: str = _EXPERIMENT,
    tracking_uri: str | None = _URI,
    output_dir: str = _OUTPUT_DIR,
) -> None:
    """Resolve a registered model version or a run to a local checkpoint directory (prints its path)."""
    from pathlib import Path

    from ray_jobs.runs import local_checkpoint

    cache = Path(dst) if dst else Path(output_dir) / "models"
    try:
        path = local_checkpoint(ref, _uri(tracking_uri, output_dir), cache_dir=cache, experiment=experiment)
    except Exception as e:  # MLflow raises several types for unknown names / versions
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))

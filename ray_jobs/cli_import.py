"""``dinowm import-checkpoint``: an original DINO-WM run (hydra.yaml + checkpoints/model_latest.pth) as our
checkpoint directory (``dinowm_core.training.importers``). Bad input prints one ``error:`` line, exits 2 and
writes nothing."""

from __future__ import annotations

from pathlib import Path

import typer


def import_checkpoint_cmd(
    run_dir: Path = typer.Argument(
        ..., help="the original run directory: hydra.yaml and checkpoints/model_latest.pth"
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="our config overrides on top of the imported config: encoder.weights=/path/dinov2.pth ..."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="checkpoint directory to write (must not exist)"),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        help="our dataset of the run's env (dinowm data import-dino-wm): its action / proprio statistics. "
        "PushT needs none (the original's constants are used)",
    ),
) -> None:
    """Convert an original DINO-WM checkpoint (pickled modules, read without running code from the file)."""
    from dinowm_core.config import ConfigError
    from dinowm_core.data.store import DatasetError
    from dinowm_core.training.importers import (
        OriginalConfigError,
        StateMappingError,
        UnsafeCheckpointError,
        import_original_checkpoint,
    )

    try:
        path = import_original_checkpoint(run_dir, out, overrides or [], dataset=dataset)
    except (ConfigError, DatasetError, OriginalConfigError, StateMappingError, UnsafeCheckpointError,
            FileExistsError, FileNotFoundError, ValueError) as e:  # fmt: skip
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path} (the mapping is in {path / 'import.json'})")

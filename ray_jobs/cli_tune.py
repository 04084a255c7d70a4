"""``dinowm tune``: the command-line face of ``ray_jobs.tune`` (the same arguments as ``python -m ray_jobs.tune``)."""

from __future__ import annotations

import typer


def tune_cmd(
    space: str | None = typer.Argument(
        None, help="search space: a name from tune_spaces/ (train_wall, planner_wall, ...) or a .yaml file"
    ),
    args: list[str] | None = typer.Argument(
        None, help="planner spaces: the checkpoint first; then overrides (data.path=..., ray.*, mlflow.*)"
    ),
    num_samples: int = typer.Option(1, "--num-samples", "-n", min=1, help="samples drawn from the space"),
    max_concurrent: int | None = typer.Option(
        None, "--max-concurrent", min=1, help="trials at once (default: as many as the cluster holds)"
    ),
    search: str = typer.Option("random", "--search", help="random, or optuna (TPE)"),
    seed: int = typer.Option(0, "--seed", help="the search's seed"),
    name: str | None = typer.Option(
        None, "--name", help="the sweep's name (default tune-<space>-<time>-<hex>)"
    ),
    resume: str | None = typer.Option(
        None,
        "--resume",
        help="continue an interrupted sweep (its directory or name); finished trials are kept",
    ),
    json_out: bool = typer.Option(False, "--json", help="print the outcome as JSON on stdout"),
) -> None:
    """Hyperparameter sweep on Ray Tune: training trials on Ray Train with ASHA, or planner settings on one
    checkpoint; tracked in MLflow, the best trial exported for plan and serve."""
    from ray_jobs.tune import main

    argv = [*([space] if space else []), *(args or []), f"--num-samples={num_samples}", f"--search={search}",
            f"--seed={seed}"]  # fmt: skip
    if max_concurrent:
        argv.append(f"--max-concurrent={max_concurrent}")
    if name:
        argv.append(f"--name={name}")
    if resume:
        argv.append(f"--resume={resume}")
    if json_out:
        argv.append("--json")
    code = main(argv)
    if code:
        raise typer.Exit(code)

"""The `dinowm` command line."""

from __future__ import annotations

import json
import logging
import sys

import typer

from ray_jobs.cli_data import data_app
from ray_jobs.cli_runs import runs_app, train_cmd

app = typer.Typer(
    help="DINO-WM world models: build, train, plan and serve. Overrides are Hydra-style key=value.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.command("train")(train_cmd)

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
    quick: bool = typer.Option(False, "--quick", help="tiny sizes: a one-minute smoke run"),
) -> None:
    """Generate data, train with Ray Train + MLflow, plan with Ray env actors: offline, on a CPU."""
    from dinowm_core.config import ConfigError
    from ray_jobs import quickstart
    from ray_jobs.train_preflight import PreflightError

    try:
        quickstart.run(output_dir, overrides or [], quick=quick)
    except (ConfigError, PreflightError, FileNotFoundError, ValueError) as e:
        _fail(str(e))


# Evaluation keys accepted without the "eval." prefix: `dinowm plan CKPT n_evals=50 budget=50 seeds=[0,1,2]`.
def _eval_overrides(overrides: list[str]) -> list[str]:
    from dinowm_core.config import EvalConfig

    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"eval.{key}={value}" if sep and key.strip() in EvalConfig.model_fields else item)
    return out


@app.command("plan")
def plan_cmd(
    ckpt: str = typer.Argument(..., help="checkpoint directory"),
    overrides: list[str] | None = OVERRIDES,
    json_out: bool = typer.Option(False, "--json", help="print the results JSON to stdout"),
    use_ray: bool = typer.Option(False, "--ray/--no-ray", help="episodes in Ray env actors, or in-process"),
    planner_actor: bool = typer.Option(
        False, "--planner-actor", help="with --ray: the model in a planner actor"
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="output dir (default output_dir/plan/<time>)"),
) -> None:
    """Evaluate planning with a checkpoint: success rate (95% CI), distances, videos, results.json."""
    import time
    from pathlib import Path

    from dinowm_core.config import ConfigError
    from dinowm_core.evaluation.loop import check_model_env, evaluate
    from dinowm_core.planning.plan_config import plan_config
    from dinowm_core.training.checkpoint import CheckpointError, load_config_from_checkpoint, load_world_model

    try:
        cfg = plan_config(load_config_from_checkpoint(ckpt), _eval_overrides(overrides or []))
        check_model_env(cfg, load_config_from_checkpoint(ckpt))
    except (ConfigError, CheckpointError, ValueError) as e:
        _fail(str(e))
    out_dir = Path(
        out or Path(cfg.output_dir) / "plan" / f"{time.strftime('%Y%m%d_%H%M%S')}_{Path(ckpt).name}"
    )
    try:
        if use_ray:
            from ray_jobs import evaluate as ray_eval

            ray_eval.init_ray(cfg)
            result = ray_eval.evaluate_on_ray(ckpt, cfg, planner="actor" if planner_actor else "local",
                                              out_dir=out_dir)  # fmt: skip
        else:
            result = evaluate(load_world_model(ckpt), cfg, out_dir=out_dir)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    from ray_jobs.evaluate import log_to_mlflow

    log_to_mlflow(result, cfg, out_dir, ckpt)
    summary = result.summary()
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        lo, hi = summary["success_ci95"]
        typer.echo(f"{result.protocol['policy']}: success {summary['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}) "
                   f"over {summary['n']} episodes; {result.protocol['label']}; results in {out_dir}")  # fmt: skip


if __name__ == "__main__":
    app()

"""``dinowm serve``: the planning service (serving/app.py) on a Ray Serve instance, until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Any

import typer

SERVE_OVERRIDES = typer.Argument(
    None,
    help="app settings key=value (request_timeout_s=10 num_gpus=1 autoscaling.max_replicas=4 session_ttl_s=900, "
    "see serving.app.AppArgs) and job keys (ray.address=auto, mlflow.tracking_uri=...)",
)
APP_NAME = "dinowm"


def app_args(ckpt: str, overrides: list[str] | None, **options: Any) -> tuple[dict[str, Any], Any]:
    """The command line -> (validated :class:`serving.app.AppArgs` as a dict, the job config).

    A local checkpoint becomes an absolute path (replicas run in directories of their own); ``mlflow.*``
    supplies the tracking URI of an MLflow reference. Raises ``ConfigError`` naming a bad key.
    """
    from pydantic import ValidationError

    from dinowm_core.config import ConfigError
    from dinowm_core.presets import set_dotted, split_overrides
    from ray_jobs.job_config import _absolute, _absolute_uri, load_job_config, split_job_overrides
    from serving.app import AppArgs

    rest, job_overrides = split_job_overrides(overrides)
    job = load_job_config(job_overrides)
    local = os.path.isdir(os.path.expanduser(ckpt))
    tree: dict[str, Any] = {"checkpoint": _absolute(ckpt) if local else ckpt,
                            "tracking_uri": _absolute_uri(job.mlflow.tracking_uri), **options}  # fmt: skip
    for key, value in split_overrides(rest):
        set_dotted(tree, key, value)
    try:
        return AppArgs.model_validate(tree).model_dump(), job
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve_cmd(
    ckpt: str = typer.Argument(
        ...,
        help="checkpoint directory or MLflow reference (runs:/ID, models:/NAME/VERSION, models:/NAME@ALIAS)",
    ),
    overrides: list[str] | None = SERVE_OVERRIDES,
    port: int = typer.Option(8000, "--port", help="HTTP port"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    replicas: int = typer.Option(1, "--replicas", min=1, help="model replicas"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1, help="requests per planner call"),
    batch_wait_s: float = typer.Option(0.01, "--batch-wait-s", min=0, help="how long a batch waits to fill"),
) -> None:
    """Serve a checkpoint over HTTP (docs/serving.md) until Ctrl-C; bearer auth when DINOWM_API_KEY is set."""
    from dinowm_core.config import ConfigError
    from ray_jobs.cluster import connect

    try:
        args, job = app_args(ckpt, overrides, replicas=replicas, max_batch_size=max_batch_size,
                             batch_wait_s=batch_wait_s)  # fmt: skip
        _check_port_free(host, port)
    except (ConfigError, OSError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("DINOWM_API_KEY"):
        typer.secho(f"warning: listening on {host} without DINOWM_API_KEY: anyone who reaches it can plan",
                    fg=typer.colors.YELLOW, err=True)  # fmt: skip
    started = connect(job.ray)
    from ray import serve

    from serving.app import build_app

    # SIGTERM (a service manager, `kill`) stops as cleanly as Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        url = f"http://{host}:{port}"
        typer.echo(f"serving {args['checkpoint']} at {url}/v1 (API docs: {url}/docs); Ctrl-C stops", err=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping the service", err=True)
    except RuntimeError as e:  # the deployment failed (a checkpoint that does not load, ...)
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            # our own cluster: Serve goes with it; a joined cluster keeps its Serve, minus this app
            serve.shutdown() if started else serve.delete(APP_NAME)
    raise typer.Exit(code)

"""Connecting an entrypoint to Ray: one :func:`connect` for training, evaluation and the quickstart."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ray_jobs.job_config import RayConfig

# Train moves checkpoints through storage, not the object store; evaluation passes small observation batches.
OBJECT_STORE_BYTES = 512 * 1024**2
LOOPBACK = "127.0.0.1"

# The environment the embedded cluster's processes start with (they keep it; this process gets its own back).
# Always:
# - Ray turns a requested 127.0.0.1 into the machine's routable address unless it runs "local Ray" only (the
#   mode it uses on Windows/macOS). That address is the node's: GCS, raylet, workers, the dashboard agent and
#   the runtime-env agent bind it (or every interface when it is not loopback).
_LOCAL_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Unless already set:
# - gloo (DDP between CPU Train workers) listens on the address the host name resolves to, maybe a routable one.
_DEFAULTS: dict[str, str] = {}
if os.path.isdir("/sys/class/net/lo"):
    _DEFAULTS["GLOO_SOCKET_IFNAME"] = "lo"


@contextlib.contextmanager
def _embedded_start() -> Iterator[None]:
    """The settings :func:`connect` starts an embedded cluster with; this process is restored afterwards."""
    import ray._private.ray_constants as ray_constants

    env = {**_LOCAL_ONLY, **{k: v for k, v in _DEFAULTS.items() if k not in os.environ}}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_local = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import, so the environment alone is too late here
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_local
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(ray_cfg: RayConfig) -> None:
    """Join ``ray.address`` or ``$RAY_ADDRESS`` (``ray job submit`` sets it), else start an embedded cluster.

    Every Ray server of the embedded cluster (GCS, raylet, workers, dashboard and its agents) binds 127.0.0.1
    only, and token authentication stays on (the one listener it does not control: torch.distributed's
    rendezvous store, which Ray Train opens on rank 0, listens on every interface). It follows the platform
    notes for Ray 2.60: explicit CPUs (at least enough for the Train workers, and two so an evaluation's
    planner and env actors fit), an explicit object store size, a short temp dir (``$RAY_TMPDIR``: socket
    paths must stay < 108 bytes) and the dashboard on (without it Train logs "State API may be temporarily
    unavailable" every second). Does nothing when this process is already connected.
    """
    import ray

    if ray.is_initialized():
        return
    if ray_cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=ray_cfg.address or "auto")
        return
    needed = math.ceil(max(ray_cfg.num_workers, 1) * ray_cfg.cpus_per_worker)
    with _embedded_start():
        ray.init(
            num_cpus=max(os.cpu_count() or 1, needed, 2),
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            _temp_dir=os.environ.get("RAY_TMPDIR", str(Path(tempfile.gettempdir()) / "dwm-ray")),
        )

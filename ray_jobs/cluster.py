"""Connecting an entrypoint to Ray: one :func:`connect` for training, evaluation and the quickstart."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from ray_jobs.job_config import RayConfig

# Train moves checkpoints through storage, not the object store; evaluation passes small observation batches.
OBJECT_STORE_BYTES = 512 * 1024**2


def connect(ray_cfg: RayConfig) -> None:
    """Join ``ray.address`` or ``$RAY_ADDRESS`` (``ray job submit`` sets it), else start an embedded cluster.

    The embedded cluster binds to 127.0.0.1 (node and dashboard) and follows the platform notes for Ray 2.60:
    explicit CPUs (at least enough for the Train workers, and two so an evaluation's planner and env actors
    fit), an explicit object store size, a short temp dir (``$RAY_TMPDIR``: socket paths must stay < 108
    bytes) and the dashboard on (without it Train logs "State API may be temporarily unavailable" every
    second). Does nothing when this process is already connected.
    """
    import ray

    if ray.is_initialized():
        return
    if ray_cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=ray_cfg.address or "auto")
        return
    needed = math.ceil(max(ray_cfg.num_workers, 1) * ray_cfg.cpus_per_worker)
    ray.init(
        num_cpus=max(os.cpu_count() or 1, needed, 2),
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        _temp_dir=os.environ.get("RAY_TMPDIR", str(Path(tempfile.gettempdir()) / "dwm-ray")),
    )

"""The torch.distributed set-up of Ray Train workers on a one-machine loopback cluster, bound to 127.0.0.1.

Ray Train's ``TorchConfig`` starts the process group with ``init_method="env://"``: rank 0 then serves the
rendezvous store (torch's ``TCPStore``) on every interface (``[::]:port``), whatever ``MASTER_ADDR`` says, and
torch has no setting for its bind address. On a cluster that :func:`ray_jobs.cluster.connect` started on
127.0.0.1, nothing outside the machine needs that store, so :class:`LoopbackTorchConfig` does the same set-up
with a store that listens on a socket rank 0 has bound to 127.0.0.1 itself (``master_listen_fd``). Gloo's own
connections follow ``GLOO_SOCKET_IFNAME=lo`` (set by ``connect``). A multi-node cluster keeps Ray's set-up.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

LOOPBACK = "127.0.0.1"
_listener: socket.socket | None = None  # rank 0's bound socket, between the two set-up calls


def _bind_store_socket() -> int:
    """On rank 0: bind and listen on a free loopback port for the store; returns the port."""
    global _listener
    _listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _listener.bind((LOOPBACK, 0))
    _listener.listen(128)
    return _listener.getsockname()[1]


def _init_process_group(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        if _listener is None:
            raise RuntimeError("the store's socket was not bound on rank 0")
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=True, timeout=timeout,
                              master_listen_fd=_listener.fileno(), use_libuv=True)  # fmt: skip
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = LOOPBACK, str(port)
    dist.init_process_group(
        backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout
    )


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: LoopbackTorchConfig) -> None:
        import ray

        backend = backend_config.backend or "gloo"
        port = worker_group.execute_single(0, _bind_store_socket)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _init_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])  # fmt: skip


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group rendezvous listens on 127.0.0.1 only (one-machine clusters)."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


def is_loopback_cluster() -> bool:
    """Every node of the connected Ray cluster is this machine's loopback address."""
    import ray

    return all(node.get("NodeManagerAddress") == LOOPBACK for node in ray.nodes() if node.get("Alive"))


def torch_config(backend: str) -> TorchConfig:
    """The process-group set-up for ``backend`` on the connected cluster."""
    return LoopbackTorchConfig(backend=backend) if is_loopback_cluster() else TorchConfig(backend=backend)

"""Connecting an entrypoint to Ray: one :func:`connect` for training, evaluation and the quickstart.

An embedded cluster (one that :func:`connect` starts because no address was given) belongs to this process:
it listens on the loopback interface only, and it is shut down and its files removed when the process ends
(:func:`disconnect`). A cluster that is joined is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
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
# - Ray Train's preemption watcher polls for node drains, which a one-machine cluster never has, and its
#   actor makes every worker group start log an "E core_worker.cc ... PreemptionWatcher" line.
# - torch creates its compile cache (torchinductor_<user>) in the system temp dir as soon as torch._dynamo is
#   imported, which the optimizers do; a user cache directory keeps the temp dir clean and the cache warm.
_DEFAULTS: dict[str, str] = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
if os.path.isdir("/sys/class/net/lo"):
    _DEFAULTS["GLOO_SOCKET_IFNAME"] = "lo"


def torch_cache_dir() -> str:
    """``$TORCHINDUCTOR_CACHE_DIR``, else ``<$XDG_CACHE_HOME or ~/.cache>/dinowm/torchinductor``."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dinowm" / "torchinductor")


_DEFAULTS["TORCHINDUCTOR_CACHE_DIR"] = torch_cache_dir()

_session: Path | None = None  # the session directory of the cluster that connect() started in this process


def temp_dir() -> Path:
    """Where embedded clusters keep their sessions: ``<$RAY_TMPDIR or the system temp dir>/dwm-ray``.

    Short on purpose: Ray's socket paths inside it must stay < 108 bytes.
    """
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "dwm-ray"


class _TokenAuthNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" warning.

    Token auth is what an embedded cluster should have, so the notice (which suggests opting out) is no news;
    the warning for a cluster that runs *without* token auth still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


@contextlib.contextmanager
def embedded_settings() -> Iterator[None]:
    """The settings :func:`connect` starts an embedded cluster with; this process is restored afterwards."""
    import ray._private.ray_constants as ray_constants

    env = {**_LOCAL_ONLY, **{k: v for k, v in _DEFAULTS.items() if k not in os.environ}}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_local = ray_constants.ENABLE_RAY_CLUSTER
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = _TokenAuthNotice()
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import, so the environment alone is too late here
    auth_log.addFilter(notice)
    try:
        yield
    finally:
        auth_log.removeFilter(notice)
        ray_constants.ENABLE_RAY_CLUSTER = saved_local
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(ray_cfg: RayConfig) -> bool:
    """Join ``ray.address`` or ``$RAY_ADDRESS`` (``ray job submit`` sets it), else start an embedded cluster.

    Returns True when this call started the embedded cluster. It is private to this process:

    - every Ray server of it (GCS, raylet, workers, dashboard and its agents) binds 127.0.0.1 only, and
      token authentication stays on (torch.distributed's rendezvous store, which Train workers open, is
      bound by ``ray_jobs.train_backend``);
    - it follows the platform notes for Ray 2.60: explicit CPUs (at least enough for the Train workers, and
      two so an evaluation's planner and env actors fit), an explicit object store size, the short
      :func:`temp_dir` and the dashboard on (without it Train logs "State API may be temporarily
      unavailable" every second);
    - when the process exits (normally, on an exception or on Ctrl-C) :func:`disconnect` shuts it down and
      removes its session directory; call it directly to do so earlier.

    Does nothing (and returns False) when this process is already connected. A joined cluster is left as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    if ray_cfg.address or os.environ.get("RAY_ADDRESS"):
        address = ray_cfg.address or os.environ.get("RAY_ADDRESS") or "auto"
        if _is_loopback(address):  # a cluster on 127.0.0.1 only: this driver must join it as 127.0.0.1 too
            with embedded_settings():
                ray.init(address=address, _node_ip_address=LOOPBACK)
        else:
            ray.init(address=address)
        return False
    needed = math.ceil(max(ray_cfg.num_workers, 1) * ray_cfg.cpus_per_worker)
    tmp = temp_dir()
    before = set(tmp.glob("session_*"))
    try:
        with embedded_settings():
            ray.init(
                num_cpus=max(os.cpu_count() or 1, needed, 2),
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=True,
                dashboard_host=LOOPBACK,
                _node_ip_address=LOOPBACK,
                _temp_dir=str(tmp),
            )
    except BaseException:
        # A start that failed half-way (or was interrupted) may have created a session: its name ends in our PID.
        ray.shutdown()
        for session in set(tmp.glob(f"session_*_{os.getpid()}")) - before:
            _remove_session(session)
        raise
    global _session
    _session = Path(ray._private.worker._global_node.get_session_dir_path())
    atexit.register(disconnect)
    return True


def _is_loopback(address: str) -> bool:
    """Whether ``address`` (``host:port`` of a GCS) is a cluster whose every node is 127.0.0.1: one started in
    Ray's local-only mode, as :func:`connect` starts them. Such a cluster is only joined by a driver that runs
    in that mode too (otherwise the driver registers the machine's routable address and waits for a raylet
    there forever). Any doubt (``auto``, ``ray://``, no answer) means no."""
    if "://" in address or address == "auto" or address.rsplit(":", 1)[0] not in (LOOPBACK, "localhost"):
        return False
    try:
        from ray._raylet import GcsClient

        nodes = GcsClient(address=address).get_all_node_info(timeout=10).values()
        return bool(nodes) and all(node.node_manager_address == LOOPBACK for node in nodes)
    except Exception:  # an unreachable or foreign GCS: join the usual way, which reports it
        return False


def disconnect() -> None:
    """Shut down the embedded cluster that :func:`connect` started in this process and remove its files.

    Removes its session directory, ``session_latest`` when it points there, and :func:`temp_dir` when no
    other session is left in it. Does nothing for a joined cluster or when no cluster was started here.
    """
    import ray

    global _session
    session, _session = _session, None
    if session is None:
        return
    atexit.unregister(disconnect)
    leftovers = forkserver_dirs()
    try:
        ray.shutdown()
    finally:
        _remove_session(session)
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)


def _remove_session(session: Path, timeout_s: float = 10.0) -> None:
    # Workers notice their raylet's exit a moment after ray.shutdown() and may still be writing logs.
    deadline = time.monotonic() + timeout_s
    while session.exists() and time.monotonic() < deadline:
        shutil.rmtree(session, ignore_errors=True)
        if session.exists():
            time.sleep(0.2)
    tmp = session.parent
    latest = tmp / "session_latest"
    if latest.is_symlink() and Path(os.readlink(latest)).name == session.name:
        latest.unlink(missing_ok=True)
    if not any(tmp.glob("session_*")):  # no other cluster uses this temp dir
        (tmp / "prom_metrics_service_discovery.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            tmp.rmdir()


def _cluster_pids() -> set[int]:
    """The processes of the embedded cluster (the ones Ray started and all their descendants), from /proc."""
    import ray

    node = ray._private.worker._global_node
    if node is None or not os.path.isdir("/proc"):
        return set()
    todo = [info.process.pid for infos in node.all_processes.values() for info in infos]
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    pids = set()
    while todo:
        pid = todo.pop()
        pids.add(pid)
        todo += children.get(pid, [])
    return pids


def forkserver_dirs() -> set[Path]:
    """The connected local cluster's ``pymp-*`` directories (:func:`_forkserver_dirs`): collect them before
    ``ray.shutdown()`` and remove them after it."""
    return _forkserver_dirs(_cluster_pids())


def _forkserver_dirs(pids: set[int]) -> set[Path]:
    """The ``pymp-*`` directories in the system temp dir whose socket one of ``pids`` listens on.

    The dashboard runs its modules through a multiprocessing forkserver and exits with ``os._exit`` on
    SIGTERM, so the forkserver's directory would outlive every session.
    """
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    dirs = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and int(fields[6]) in inodes:
                parent = Path(fields[7]).parent
                if parent.name.startswith("pymp-") and parent.parent == Path(tempfile.gettempdir()):
                    dirs.add(parent)
    return dirs

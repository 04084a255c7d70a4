"""Process-tree helpers for tests that start Ray clusters: stop exactly what a test started, by PID.

``ray stop`` (or killing by name) would take down every Ray process of the user, including other clusters on the
machine, so tests snapshot the process tree they own and end those PIDs only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone: only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace_s``, SIGKILL what is left -> the PIDs that needed SIGKILL."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    wait_gone(pids, grace_s)
    stubborn = [p for p in pids if alive(p)]
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    return stubborn


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until none of ``pids`` runs or ``timeout_s`` passes -> the ones still running."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def name(pid: int) -> str:
    """The process's command line (``ray::TrainController`` for a Ray actor), or ``?`` once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"

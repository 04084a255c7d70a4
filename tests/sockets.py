"""Which addresses a set of processes listens on, read from /proc (no psutil): for "binds 127.0.0.1 only" tests.

    listening_sockets(pids)         -> the listening TCP sockets and bound UDP sockets those processes hold now
    with SocketWatch(marker) as w:  ...  then w.sockets: everything seen while the block ran, in processes whose
                                    command line or environment contains ``marker`` (e.g. the temp dir a cluster
                                    was started with) and in their descendants, polled every ``interval_s``;
                                    w.not_loopback() lists the offenders, w.poll() looks once more right now
    is_loopback(sock.address)       -> True for 127.0.0.0/8 and ::1 (and ::ffff:127.x.x.x)

A socket is matched to its process through the ``socket:[inode]`` links under ``/proc/<pid>/fd`` and the inode
column of ``/proc/net/{tcp,tcp6,udp,udp6}`` (TCP in state LISTEN; UDP sockets are connectionless, so an unconnected
one counts as listening). Only the processes of this user can be inspected; that is enough for what a test starts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"  # TCP_CLOSE: what /proc/net/udp shows for a bound socket with no peer


@dataclass(frozen=True)
class Socket:
    proto: str  # tcp, tcp6, udp, udp6
    address: str  # "127.0.0.1", "0.0.0.0", "::"
    port: int
    pid: int
    process: str = field(compare=False)  # its command line when last seen (a Ray worker renames itself)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.proto} {host}:{self.port} pid {self.pid} ({self.process})"


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _decode_address(hex_addr: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080); the address is in host byte order, 32-bit word by word."""
    addr, port = hex_addr.split(":")
    words = [int(addr[i : i + 8], 16) for i in range(0, len(addr), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def _bound_sockets() -> dict[int, tuple[str, str, int]]:
    """inode -> (proto, address, port) of every listening TCP / unconnected UDP socket of this network namespace."""
    out = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:  # no IPv6
            continue
        wanted = _TCP_LISTEN if proto.startswith("tcp") else _UDP_UNCONNECTED
        for line in lines:
            f = line.split()
            if f[3] == wanted:
                out[int(f[9])] = (proto, *_decode_address(f[1]))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _cmdline(pid: int) -> str:
    try:
        return " ".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        )
    except OSError:
        return "?"


def listening_sockets(pids) -> set[Socket]:
    """The listening TCP and bound UDP sockets that ``pids`` hold right now (processes that are gone are skipped)."""
    bound = _bound_sockets()
    found = set()
    for pid in pids:
        held = _socket_inodes(pid) & bound.keys()
        name = _cmdline(pid)[:160] if held else ""
        found |= {Socket(*bound[inode], pid, name) for inode in held}
    return found


def pids_with(marker: str) -> list[int]:
    """The processes whose command line or environment contains ``marker``, and all their descendants.

    Descendants count because a process that renames itself (Ray's agents and workers do, through setproctitle)
    may overwrite the start of its environment, so the marker is not always readable there.
    """
    needle = marker.encode()
    matched, children = [], {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
            if any(needle in Path(f"/proc/{entry}/{part}").read_bytes() for part in ("cmdline", "environ")):
                matched.append(int(entry))
        except (OSError, IndexError, ValueError):  # gone, or not ours
            continue
    found, todo = set(), matched
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return sorted(found)


class SocketWatch:
    """Collects the sockets listened on by the processes that carry ``marker`` while the ``with`` block runs.

    Ray's processes come and go (workers, agents): a background thread looks every ``interval_s`` and keeps the
    union in :attr:`sockets`; one last look happens on exit. This process itself is never included (its own
    environment may hold the marker), so start what is watched in a subprocess.
    """

    def __init__(self, marker: str, interval_s: float = 0.3):
        self.marker, self.interval_s = marker, interval_s
        self.sockets: set[Socket] = set()
        self.pids: set[int] = set()
        self._lock = threading.Lock()  # poll() runs in the background thread and may be called directly
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-watch", daemon=True)

    def poll(self) -> None:
        pids = pids_with(self.marker)
        seen = listening_sockets(pids)
        with self._lock:
            self.pids.update(pids)
            # Keep the latest process names, but never an empty one: a process that is exiting has released its
            # memory (an empty /proc/<pid>/cmdline) while its sockets are still open.
            named = {sock for sock in seen if sock.process}
            self.sockets = (self.sockets - named) | named | (seen - self.sockets)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def owners(self) -> str:
        """The command lines of the processes seen listening, in one string (to look for a server's name)."""
        return " ".join(sorted({s.process for s in self.sockets}))

    def not_loopback(self) -> list[Socket]:
        return sorted((s for s in self.sockets if not is_loopback(s.address)), key=str)

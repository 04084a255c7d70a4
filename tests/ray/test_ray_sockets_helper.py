"""tests/sockets.py sees what a process listens on, and tells loopback from the rest (no Ray involved)."""

from __future__ import annotations

import subprocess
import sys
import uuid

from tests.sockets import SocketWatch, _decode_address, is_loopback

# Listens on TCP 127.0.0.1, TCP every interface (IPv4 and IPv6) and UDP ::1, then waits for stdin to close.
SERVER = r"""
import socket, sys
socks = []
for family, kind, host in [(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"), (socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0"),
                           (socket.AF_INET6, socket.SOCK_STREAM, "::"), (socket.AF_INET6, socket.SOCK_DGRAM, "::1")]:
    s = socket.socket(family, kind)
    s.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        s.listen()
    socks.append(s)
print(*(s.getsockname()[1] for s in socks), flush=True)
sys.stdin.read()
"""


def test_decodes_proc_net_addresses():
    assert _decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _decode_address("00000000000000000000000001000000:0035") == ("::1", 53)
    assert _decode_address("0000000000000000FFFF00000100007F:0050") == ("::ffff:127.0.0.1", 80)
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("127.0.1.1") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")


def test_watch_finds_the_listeners_of_a_marked_process():
    marker = f"marker-{uuid.uuid4().hex}"
    with SocketWatch(marker) as watch:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, marker], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            ports = [int(p) for p in proc.stdout.readline().split()]
            watch.poll()
        finally:
            proc.communicate("")
    found = {(s.proto, s.address, s.port) for s in watch.sockets if s.pid == proc.pid}
    assert found == {("tcp", "127.0.0.1", ports[0]), ("tcp", "0.0.0.0", ports[1]), ("tcp6", "::", ports[2]),
                     ("udp6", "::1", ports[3])}  # fmt: skip
    assert {(s.address, s.port) for s in watch.not_loopback()} == {("0.0.0.0", ports[1]), ("::", ports[2])}

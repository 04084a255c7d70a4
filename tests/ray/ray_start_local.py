"""``ray start`` for a second node on this machine that joins a head on 127.0.0.1: ``python -m tests.ray.ray_start_local
start --address 127.0.0.1:<port> ...``.

Ray replaces 127.0.0.1 in ``--address`` and ``--node-ip-address`` with the machine's routable address, except in its
local-only mode, which refuses to start a node that joins a cluster. A node on another machine never names the head
127.0.0.1, so only this rehearsal needs the address kept as given; everything else is the ``ray`` command itself.
"""

from __future__ import annotations

import sys

import ray._private.services as services


def _keep(host: str) -> str:
    return host


services.resolve_ip_for_localhost = (
    _keep  # looked up at call time by `ray start` and the bootstrap address parser
)

if __name__ == "__main__":
    from ray.scripts.scripts import main

    sys.exit(main())

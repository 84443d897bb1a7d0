"""Free loopback ports."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process: the kernel can
    give the same port to two calls in a row, and two services of one stack then shared it
    (a gateway's health check answered by a gRPC server)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port

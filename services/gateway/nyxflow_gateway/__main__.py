"""`python -m nyxflow_gateway`."""

from __future__ import annotations

import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from nyxflow import logs, loop, tracing
from nyxflow.cli.connection import load_settings, refusal_to_start
from nyxflow.errors import InvalidArgument
from nyxflow_gateway.app import create_app
from nyxflow_gateway.http_protocol import Protocol
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_gateway.stopping import Server


def main() -> None:
    loop.hand_over_io_quickly()
    with refusal_to_start("gateway"):
        settings = load_settings(GatewaySettings)
        logs.configure("gateway", settings.log_level)
        traced = tracing.configure("gateway", settings.otlp_endpoint)
        app = create_app(settings)
        if traced:
            tracing.instrument_app(app)
        loop.settle_heap()
        try:
            config = uvicorn.Config(
                app,
                log_config=None,  # our JSON logging
                loop="uvloop",
                http=Protocol,  # httptools, refusing what it cannot parse in our JSON (see there)
                timeout_graceful_shutdown=5,
            )
            listeners = listening_sockets(
                settings.gateway_host, settings.gateway_port, settings.peer_timeout_s
            )
            # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the
            # handler it found: Python's printed a KeyboardInterrupt traceback (Ctrl-C on
            # `make run`) and SIGTERM's default ended the process by the signal. Runs and the
            # engine exit 0 after their drain; so does the gateway.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _stopped)
            # Its stop ends the event streams first, which would hold it for the whole grace.
            Server(config, app).run(sockets=listeners)
        finally:
            if traced:
                tracing.shutdown()


def _stopped(_signal: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def listening_sockets(host: str, port: int, peer_timeout_s: float) -> list[socket.socket]:
    """The gateway's listening sockets, one per address `host` resolves to (a name may give
    both an IPv4 and an IPv6 address, and a browser may try either; an empty host is every
    interface), all on one port; the connections they accept inherit their TCP options."""
    if not 0 <= port <= 65535:  # getaddrinfo would wrap it round silently
        raise InvalidArgument(f"{port} is not a TCP port", field="NYXFLOW_GATEWAY_PORT")
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        raise InvalidArgument(
            f"cannot listen on {host}: {error}", field="NYXFLOW_GATEWAY_HOST"
        ) from None
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            if sockets:  # port 0: the first socket's port, so that one URL reaches them all
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sockets.append(_listen(family, address, len(addresses) > 1, peer_timeout_s))
    except OSError as error:
        for sock in sockets:
            sock.close()
        reason = error.strerror or str(error)
        raise InvalidArgument(
            f"cannot listen on {host}:{port}: {reason}", field="NYXFLOW_GATEWAY_PORT"
        ) from None
    return sockets


def _listen(
    family: socket.AddressFamily, address: tuple[Any, ...], several: bool, peer_timeout_s: float
) -> socket.socket:
    """A browser whose machine or network vanished sends no FIN or RST: its stream, and the
    run's upstream it shares, would be held until TCP gave up retransmitting (about 15
    minutes). With `peer_timeout_s`, a connection whose data (an event, or the SSE heartbeat
    on a quiet stream) goes unacknowledged that long is closed by the kernel, as is an idle
    one whose keepalive probes go unanswered. 0 leaves both to the kernel's defaults."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and several:
            # a dual-stack `::` would take the IPv4 port its `0.0.0.0` sibling binds
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if peer_timeout_s > 0:
            probe_s = max(1, round(peer_timeout_s / 3))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, probe_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, probe_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, round(peer_timeout_s * 1000))
            )
        sock.bind(address)
        sock.listen(2048)  # uvicorn's backlog
    except OSError:
        sock.close()
        raise
    return sock


if __name__ == "__main__":
    main()

"""`python -m nyxflow_gateway`."""

from __future__ import annotations

import socket

import uvicorn

from nyxflow import logs, loop, tracing
from nyxflow.cli.connection import load_settings, refusal_to_start
from nyxflow.errors import InvalidArgument
from nyxflow_gateway.app import create_app
from nyxflow_gateway.http_protocol import Protocol
from nyxflow_gateway.settings import GatewaySettings


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
            listener = listening_socket(
                settings.gateway_host, settings.gateway_port, settings.peer_timeout_s
            )
            uvicorn.Server(config).run(sockets=[listener])
        finally:
            if traced:
                tracing.shutdown()


def listening_socket(host: str, port: int, peer_timeout_s: float) -> socket.socket:
    """The gateway's listening socket; the connections it accepts inherit its TCP options.

    A browser whose machine or network vanished sends no FIN or RST: its stream, and the
    run's upstream it shares, would be held until TCP gave up retransmitting (about 15
    minutes). With `peer_timeout_s`, a connection whose data (an event, or the SSE heartbeat
    on a quiet stream) goes unacknowledged that long is closed by the kernel, as is an idle
    one whose keepalive probes go unanswered. 0 leaves both to the kernel's defaults."""
    if not 0 <= port <= 65535:  # getaddrinfo would wrap it round silently
        raise InvalidArgument(f"{port} is not a TCP port", field="NYXFLOW_GATEWAY_PORT")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as error:
        raise InvalidArgument(
            f"cannot listen on {host}: {error}", field="NYXFLOW_GATEWAY_HOST"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if peer_timeout_s > 0:
        probe_s = max(1, round(peer_timeout_s / 3))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, probe_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, probe_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, round(peer_timeout_s * 1000))
        )
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise InvalidArgument(
            f"cannot listen on {host}:{port}: {reason}", field="NYXFLOW_GATEWAY_PORT"
        ) from None
    sock.listen(2048)  # uvicorn's backlog
    return sock


if __name__ == "__main__":
    main()

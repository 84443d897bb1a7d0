"""The port check before a service binds: a port held is in use; an address family the host
lacks (IPv6 on a kernel booted without it, where getaddrinfo still gives ::) is not, and the
check raised OSError there, a traceback at start where gRPC would have bound IPv4 alone."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from nyxflow.cli.supervisor import in_use


def test_a_port_held_is_in_use_and_a_free_one_is_not() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert in_use("127.0.0.1", port)
    assert not in_use("127.0.0.1", port)


def test_an_address_family_the_host_lacks_is_not_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket

    def without_ipv6(family: int = socket.AF_INET, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args)

    monkeypatch.setattr(socket, "socket", without_ipv6)
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda *_, **__: [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::", 0, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("0.0.0.0", 0)),
        ],
    )
    assert in_use("", 0) is False

"""The gateway's listening sockets: every address its host resolves to, on one port, with the
TCP options that close a vanished peer's connection."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from nyxflow.cli.main import local_url
from nyxflow.errors import InvalidArgument
from nyxflow_gateway.__main__ import listening_sockets


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def reaches(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return False
    return True


def ipv6_here() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_an_empty_host_is_every_interface_of_both_families_on_one_port(
    opened: list[socket.socket],
) -> None:
    if not ipv6_here():
        # CI's machine has one: there the test must run, or say why it could not
        (pytest.fail if os.environ.get("CI") else pytest.skip)("this machine has no IPv6 loopback")
    opened += listening_sockets("", 0, 30)
    families = {sock.family for sock in opened}
    assert families == {socket.AF_INET, socket.AF_INET6}
    port = opened[0].getsockname()[1]
    assert {sock.getsockname()[1] for sock in opened} == {port}
    assert reaches("127.0.0.1", port) and reaches("::1", port)


def test_a_listening_socket_carries_the_peer_timeout(opened: list[socket.socket]) -> None:
    opened += listening_sockets("127.0.0.1", 0, 30)
    (sock,) = opened
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10


def test_a_peer_timeout_of_zero_leaves_the_kernel_defaults(opened: list[socket.socket]) -> None:
    opened += listening_sockets("127.0.0.1", 0, 0)
    assert opened[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0


def test_a_port_taken_is_refused_naming_the_port(opened: list[socket.socket]) -> None:
    opened += listening_sockets("127.0.0.1", 0, 30)
    port = opened[0].getsockname()[1]
    with pytest.raises(InvalidArgument) as refused:
        listening_sockets("127.0.0.1", port, 30)
    assert refused.value.field == "NYXFLOW_GATEWAY_PORT"


@pytest.mark.parametrize(
    ("host", "port", "field"),
    [
        ("127.0.0.1", 70000, "NYXFLOW_GATEWAY_PORT"),
        ("no-such-host.invalid", 0, "NYXFLOW_GATEWAY_HOST"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(host: str, port: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        listening_sockets(host, port, 30)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("", "http://127.0.0.1:8080"),
        ("::", "http://[::1]:8080"),
        ("::1", "http://[::1]:8080"),
        ("localhost", "http://localhost:8080"),
    ],
)
def test_up_reaches_the_gateway_where_it_listens(host: str, url: str) -> None:
    assert local_url(host, 8080) == url

"""A 503 names no internal address. While runs (or the engine) was away, the gateway answered
any caller, with a valid key or not, gRPC's own text: "failed to connect to all addresses;
last error: UNKNOWN: ipv4:127.0.0.1:59315: … Connection refused". A status gRPC made (no
service answered) now reads as the default message, its text logged; a status a nyxflow
service made keeps its text."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import grpc
import httpx
import pytest

from nyxflow.cli.connection import one_line
from nyxflow.errors import Unavailable, from_rpc_error, status_details, to_details
from nyxflow.v1 import runs_pb2, runs_pb2_grpc
from nyxflow_gateway.settings import GatewaySettings
from tests.unit.test_gateway_app import FakeRuns, World, grpc_server, serve_gateway

PLAIN = "A service is unavailable; try again."
DRAINING = "engine is shutting down; start the run on another replica"
GRPC_TEXT = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.3.7:50051: "
    "Failed to connect to remote host: Connection refused"
)


@pytest.fixture
def closed_port() -> Iterator[str]:
    """An address nothing listens on (bound, never listened: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


class RefusingRuns(FakeRuns):
    """A runs service that refuses as a draining replica does, through ErrorInterceptor."""

    async def ListWorkflows(
        self, request: runs_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.ListWorkflowsResponse:
        raise Unavailable(DRAINING)


async def test_a_503_names_no_address_and_a_service_s_own_keeps_its_text(
    closed_port: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port.split(":")[1]
    away = GatewaySettings(runs_addr=closed_port, engine_addr=closed_port, rpc_timeout_s=5.0)
    headers = {"Authorization": "Bearer not-a-key"}
    with caplog.at_level(logging.WARNING, logger="nyxflow.errors"):
        async with serve_gateway(away) as base_url, httpx.AsyncClient(base_url=base_url) as http:
            answer = await http.get("/v1/workflows", headers=headers, timeout=10)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["message"] == PLAIN, answer.text
    assert port not in answer.text and "ipv4" not in answer.text, answer.text
    # the operator still reads what gRPC said
    logged = [r for r in caplog.records if r.name == "nyxflow.errors"]
    assert logged and all(r.levelno == logging.WARNING for r in logged)
    assert any(port in str(getattr(r, "error", "")) for r in logged), logged

    runs = RefusingRuns(World())  # type: ignore[abstract]  # only what the gateway calls
    async with grpc_server(runs, runs_pb2_grpc.add_RunsServicer_to_server) as runs_addr:
        up = GatewaySettings(runs_addr=runs_addr, engine_addr=closed_port, rpc_timeout_s=5.0)
        async with serve_gateway(up) as base_url, httpx.AsyncClient(base_url=base_url) as http:
            answer = await http.get("/v1/workflows", headers=headers, timeout=10)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["message"] == DRAINING, answer.text


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_grpc_s_own_text_is_kept_for_the_cli_alone(code: grpc.StatusCode) -> None:
    """The CLI's user set the addresses: its error line still says which one failed."""
    made_by_grpc = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=GRPC_TEXT
    )
    received = from_rpc_error(made_by_grpc)
    assert type(received) is Unavailable and received.message == PLAIN
    assert to_details(received) == PLAIN  # what a service passes on, or a gateway answers
    assert one_line(received) == f"{PLAIN} ({GRPC_TEXT})"

    # a service's own refusal, as ErrorInterceptor sends it, is told apart
    sent = Unavailable(DRAINING)
    trailing = grpc.aio.Metadata(*status_details(sent))
    made_by_a_service = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), trailing, details=to_details(sent)
    )
    received = from_rpc_error(made_by_a_service)
    assert received.message == DRAINING and one_line(received) == DRAINING

"""`/readyz` fails, naming the service, while runs or the engine does not answer SERVING;
`/healthz` (liveness) answers ok whatever happens behind the gateway."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nyxflow_gateway.settings import GatewaySettings
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.unit.test_gateway_app import grpc_server, serve_gateway
from tests.unit.test_gateway_security_headers import assert_secured


@contextlib.asynccontextmanager
async def health_only(status: health_pb2.HealthCheckResponse.ServingStatus) -> AsyncIterator[str]:
    """A gRPC server with nothing but health, answering `status`."""
    servicer = health.aio.HealthServicer()
    await servicer.set("", status)
    async with grpc_server(servicer, health_pb2_grpc.add_HealthServicer_to_server) as addr:
        yield addr


@contextlib.asynccontextmanager
async def gateway(runs_addr: str, engine_addr: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(runs_addr=runs_addr, engine_addr=engine_addr, rpc_timeout_s=1)
    async with (
        serve_gateway(settings) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
    ):
        yield http


async def test_not_ready_while_nothing_answers_yet_alive() -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with gateway(nobody, nobody) as http:
        ready = await http.get("/readyz")
        alive = await http.get("/healthz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "not_ready": ["runs", "engine"]}
    assert_secured(ready)
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}


async def settles(http: httpx.AsyncClient, status: int, body: dict[str, object]) -> None:
    """Until /readyz answers `status` with `body` (a first connection may be slow to open)."""

    async def answer() -> tuple[int, object]:
        response = await http.get("/readyz")
        assert_secured(response)
        return response.status_code, response.json()

    await eventually(answer, lambda seen: seen == (status, body), timeout_s=15, interval_s=0.1)


async def test_not_ready_names_the_service_that_does_not_serve() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    async with (
        health_only(health_pb2.HealthCheckResponse.SERVING) as serving,
        health_only(health_pb2.HealthCheckResponse.NOT_SERVING) as draining,
    ):
        async with gateway(serving, draining) as http:
            await settles(http, 503, {"status": "not ready", "not_ready": ["engine"]})
        async with gateway(nobody, serving) as http:
            await settles(http, 503, {"status": "not ready", "not_ready": ["runs"]})
        async with gateway(serving, serving) as http:
            await settles(http, 200, {"status": "ready"})
            assert (await http.head("/readyz")).status_code == 200

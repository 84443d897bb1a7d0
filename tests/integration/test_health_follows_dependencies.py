"""grpc.health.v1 follows each service's dependency after start-up, not only at start-up:
runs while its PostgreSQL is reachable, the engine while runs serves; the gateway's /readyz
while both do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nyxflow_gateway.settings import GatewaySettings
from tests.support.databases import fresh_database
from tests.support.eventually import eventually
from tests.support.inprocess import engine_service, runs_service
from tests.support.ports import free_port
from tests.unit.test_gateway_app import serve_gateway

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNREACHABLE = -1
WITHIN_S = 30.0  # a check every 2 s, a 1.5 s bound on each, and room for a loaded machine


class Proxy:
    """A TCP relay to PostgreSQL that can be cut (every connection, and new ones refused) and
    restored on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.port, self.target = free_port(), target
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.WriteTransport] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.transports |= {writer.transport, up_writer.transport}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for transport in self.transports:
            transport.abort()
        self.transports.clear()
        await self.server.wait_closed()
        self.server = None


@contextlib.asynccontextmanager
async def proxied_postgresql(tmp_path: Path) -> AsyncIterator[tuple[str, Proxy]]:
    """A fresh PostgreSQL database's URL through a proxy, and the proxy."""
    async with fresh_database("postgresql", tmp_path) as url:
        proxy = Proxy(("127.0.0.1", 5432))
        await proxy.start()
        try:
            yield url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/"), proxy
        finally:
            await proxy.cut()


async def status(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError:
            return UNREACHABLE
        return int(answer.status)


async def becomes(addr: str, wanted: int, what: str) -> None:
    await eventually(
        lambda: status(addr), lambda s: s == wanted, timeout_s=WITHIN_S, interval_s=0.2, what=what
    )


async def test_runs_is_not_serving_while_its_postgresql_is_unreachable(tmp_path: Path) -> None:
    async with (
        proxied_postgresql(tmp_path) as (url, proxy),
        runs_service(url, database_wait_s=5) as settings,
    ):
        addr = settings.runs_listen
        assert await status(addr) == SERVING
        await proxy.cut()
        await becomes(addr, NOT_SERVING, "runs NOT_SERVING with its database cut off")
        await proxy.start()
        await becomes(addr, SERVING, "runs SERVING once its database is back")


async def test_the_engine_is_not_serving_while_runs_is_gone(tmp_path: Path) -> None:
    async with fresh_database("sqlite", tmp_path) as url:
        runs_listen = f"127.0.0.1:{free_port()}"
        runs = contextlib.AsyncExitStack()
        await runs.enter_async_context(runs_service(url, runs_listen=runs_listen))
        async with engine_service(runs_listen) as engine_settings:
            addr = engine_settings.engine_listen
            assert await status(addr) == SERVING
            await runs.aclose()  # runs stops; the engine stays up
            await becomes(addr, NOT_SERVING, "the engine NOT_SERVING with runs gone")
            async with runs_service(url, runs_listen=runs_listen):  # runs back, same address
                await becomes(addr, SERVING, "the engine SERVING once runs is back")


async def test_the_gateway_is_ready_while_runs_and_the_engine_serve(tmp_path: Path) -> None:
    async with (
        fresh_database("sqlite", tmp_path) as url,
        runs_service(url) as runs_settings,
    ):
        engine_stop = asyncio.Event()
        async with engine_service(runs_settings.runs_listen, stop=engine_stop) as engine_settings:
            settings = GatewaySettings(
                runs_addr=runs_settings.runs_listen, engine_addr=engine_settings.engine_listen
            )
            async with (
                serve_gateway(settings) as base_url,
                httpx.AsyncClient(base_url=base_url, timeout=10) as http,
            ):

                async def readiness() -> tuple[int, object]:
                    answer = await http.get("/readyz")
                    return answer.status_code, answer.json()

                async def settles(status: int, body: dict[str, object]) -> None:
                    await eventually(
                        readiness,
                        lambda seen: seen == (status, body),
                        timeout_s=WITHIN_S,
                        interval_s=0.2,
                        what=f"/readyz {status} {body}",
                    )

                await settles(200, {"status": "ready"})
                engine_stop.set()  # the engine drains (NOT_SERVING), then goes
                await settles(503, {"status": "not ready", "not_ready": ["engine"]})

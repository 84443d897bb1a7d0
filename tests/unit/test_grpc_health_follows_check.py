"""A serving gRPC service's health follows its dependency's check after start-up: NOT_SERVING
while the check says no, fails or hangs, SERVING again once it says yes; one log line per
change, and a draining service is never turned SERVING again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nyxflow.grpc_server import GrpcService
from tests.support.eventually import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INTERVAL_S = 0.05


@dataclass
class Dependency:
    """What the check answers: ok, no, raise or hang; and how often it was asked."""

    state: str = "ok"
    calls: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def check(self) -> bool:
        self.calls += 1
        if self.state == "raise":
            raise ConnectionRefusedError("connection refused")
        if self.state == "hang":
            await self.released.wait()
        return self.state == "ok"


@dataclass
class Served:
    addr: str
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def status(self) -> int:
        async with grpc.aio.insecure_channel(self.addr) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        return int(answer.status)

    async def becomes(self, wanted: int) -> None:
        await eventually(self.status, lambda s: s == wanted, timeout_s=15, what=f"status {wanted}")


@contextlib.asynccontextmanager
async def served(
    check: Callable[[], Awaitable[bool]], on_drain: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[Served]:
    stop, ready = asyncio.Event(), asyncio.Event()
    service = GrpcService(["test.Service"], "127.0.0.1:0", stop)
    task = asyncio.create_task(
        service.run(ready=ready, check=check, on_drain=on_drain, health_interval_s=INTERVAL_S)
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield Served(f"127.0.0.1:{service.port}", stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def asked_again(dependency: Dependency, times: int = 3) -> None:
    """Until the check has been asked `times` more (polls that find no change)."""

    async def calls() -> int:
        return dependency.calls

    start = dependency.calls
    await eventually(calls, lambda n: n >= start + times, what="polls")


async def test_health_follows_the_check_and_logs_each_change_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dependency = Dependency()
    caplog.set_level(logging.INFO, logger="nyxflow.grpc_server")
    async with served(dependency.check) as service:
        assert await service.status() == SERVING
        for state, wanted, polls in [
            ("raise", NOT_SERVING, 3),  # a check that fails is a no
            ("ok", SERVING, 3),
            ("no", NOT_SERVING, 3),
            ("ok", SERVING, 3),
            ("hang", NOT_SERVING, 1),  # a check that never answers is a no (each poll times out)
        ]:
            dependency.state = state
            await service.becomes(wanted)
            await asked_again(dependency, polls)
            assert await service.status() == wanted
        dependency.released.set()
    changes = [r for r in caplog.records if getattr(r, "action", None) == "health"]
    assert [r.levelno for r in changes] == [logging.WARNING, logging.INFO] * 2 + [logging.WARNING]
    assert "connection refused" in changes[0].error  # type: ignore[attr-defined]
    assert "no answer within" in changes[-1].error  # type: ignore[attr-defined]
    assert all(r.exc_info is None for r in changes)  # one line, no traceback


async def test_a_draining_service_is_not_turned_serving_again() -> None:
    dependency = Dependency()
    seen: list[tuple[int, int]] = []

    async def drain() -> None:
        asked = dependency.calls
        # Many poll intervals pass while the drain runs: a poll left running would have asked
        # the check (which says yes) and set SERVING again.
        await asyncio.sleep(20 * INTERVAL_S)
        seen.append((await service.status(), dependency.calls - asked))

    async with served(dependency.check, drain) as service:
        await asked_again(dependency)
        assert await service.status() == SERVING
        service.stop.set()
        await asyncio.wait_for(service.task, 10)
    assert seen == [(NOT_SERVING, 0)]

"""A browser that leaves before its stream begins, under the gateway's own loop (uvloop), whose
transports raise on a write after close where asyncio's count it silently."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvloop

from nyxflow import events as ev
from nyxflow.v1 import runs_pb2
from tests.support.eventually import eventually
from tests.unit.test_gateway_app import (  # noqa: F401  (fixtures)
    KEY,
    FakeRuns,
    Gateway,
    events_url,
    gateway,
    overrides,
    protocol,
)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestDeprecationWarning")


@pytest.fixture
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()  # as `python -m nyxflow_gateway` runs


@pytest.fixture
def slow_get_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's status takes a while: long enough for the browser to leave meanwhile."""
    original = FakeRuns.GetRun

    async def slow(self: FakeRuns, request: runs_pb2.GetRunRequest, context: Any) -> Any:
        await asyncio.sleep(0.3)
        return await original(self, request, context)

    monkeypatch.setattr(FakeRuns, "GetRun", slow)


async def send_and_leave(stack: Gateway) -> None:
    host, port = stack.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    request = f"GET {events_url()} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()  # the tab is closed before the answer
    await asyncio.sleep(0.6)


@pytest.mark.parametrize("status", [ev.RUNNING, ev.PENDING])
async def test_a_browser_gone_before_its_stream_began_is_no_error(
    slow_get_run: None,
    gateway: Gateway,  # noqa: F811  (the fixture imported above)
    caplog: pytest.LogCaptureFixture,
    status: str,
) -> None:
    gateway.world.add_run(status)
    caplog.set_level(logging.WARNING)
    await send_and_leave(gateway)
    # Released by now, or soon after on a loaded machine.
    await eventually(gateway.upstreams, lambda n: n == 0, timeout_s=10, what="upstream released")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []

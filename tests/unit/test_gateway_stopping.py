"""The gateway's stop: the hub ends every stream, a stream opened meanwhile ends at once, and a
request the server cancels as it stops is answered 503."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import cast

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway import hub as hub_module
from nyxflow_gateway.deps import Services
from nyxflow_gateway.hub import RunHub
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_gateway.sse import EventStream
from nyxflow_gateway.stopping import CutShort


def scope(stopping: bool) -> Scope:
    return {"type": "http", "app": SimpleNamespace(state=SimpleNamespace(stopping=stopping))}


async def nothing() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_end_all_ends_every_stream_after_what_it_was_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def five_then_quiet(*_: object) -> AsyncIterator[list[pb.RunEvent]]:
        yield [pb.RunEvent(run_id="run", seq=s, type="step_delta") for s in range(1, 6)]
        await asyncio.Event().wait()  # the run goes on
        yield []

    monkeypatch.setattr(hub_module, "upstream", five_then_quiet)
    hub = RunHub(queue_size=100, heartbeat_s=60)
    try:
        following = hub.subscribe(cast(Services, None), "run", "running", 0)
        await asyncio.sleep(0.01)  # the five are pending for the browser
        hub.end_all()
        pending, ended = await following.take()
        assert [f.seq for f in pending] == [1, 2, 3, 4, 5] and ended
        late = hub.subscribe(cast(Services, None), "run", "running", 5)
        assert await late.take() == ([], True)
    finally:
        await hub.close()


async def test_a_stream_opened_while_the_gateway_stops_ends_at_once_and_opens_nothing() -> None:
    hub = RunHub(queue_size=100, heartbeat_s=60)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    stream = EventStream(hub, cast(Services, None), "run", "pending", 0, GatewaySettings())
    await stream(scope(stopping=True), nothing, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200  # EventSource reconnects; a 503 would end it for good
    assert sent[1]["body"].startswith(b"retry:") and not sent[1]["more_body"]
    assert hub.channels == 0 and hub.upstream_streams == 0  # no run started, none followed
    await hub.close()


async def stuck(_: Scope, receive: Receive, send: Send) -> None:
    await receive()  # a body that does not come


async def started_then_stuck(_: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await receive()


async def cancelled(app: CutShort, stopping: bool) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.create_task(app(scope(stopping), nothing, send))
    await asyncio.sleep(0)
    task.cancel()
    await task
    return sent


async def test_a_request_the_stop_cancels_before_its_answer_gets_a_json_503() -> None:
    start, body = await cancelled(CutShort(stuck), stopping=True)
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    assert start["status"] == 503
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(body["body"])["error"]["code"] == "unavailable"


@pytest.mark.parametrize(
    ("app", "stopping"), [(stuck, False), (started_then_stuck, True)], ids=["running", "started"]
)
async def test_any_other_cancellation_goes_on(app: ASGIApp, stopping: bool) -> None:
    with pytest.raises(asyncio.CancelledError):
        await cancelled(CutShort(app), stopping)

"""The gateway stopped (SIGTERM) under its browsers: event streams end cleanly at once, and a
request the stop cuts short gets the documented JSON 503."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from nyxflow import events as ev
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, get_run, start_run, steps
from tests.support.processes import ProcessStack, running_stack
from tests.support.sse_client import frames

BROWSERS = 3
# What the gateway logs when a response is cut by its graceful timeout.
CRASHES = ("Traceback", "Exception in ASGI application", "timeout graceful shutdown exceeded")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    with running_stack("sqlite", tmp_path_factory.mktemp("gateway-stop"), None) as stack:
        yield stack


@pytest.fixture
async def http(stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client


async def follow(stack: ProcessStack, run_id: str, seqs: list[int], after: int = 0) -> str:
    """One browser: the seqs it reads go to `seqs`; how its stream ended."""
    headers = {**stack.headers, **({"Last-Event-ID": str(after)} if after else {})}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        try:
            async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as r:
                assert r.status_code == 200
                async for frame in frames(r):
                    if frame.event is not None:
                        seqs.append(frame.seq)
        except httpx.HTTPError as error:  # cut mid-body: an incomplete chunked read
            return f"{type(error).__name__}: {error}"
    return "clean end"


async def stop_gateway(stack: ProcessStack) -> int:
    """SIGTERM to the gateway; its exit code once it is gone."""
    gateway = stack.procs["gateway"]
    gateway.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(gateway.wait, 30)


def new_log(stack: ProcessStack, since: int) -> str:
    return stack.log_text("gateway")[since:]


@pytest.mark.timeout(120)
async def test_sigterm_ends_every_event_stream_cleanly_and_a_reconnect_gets_the_rest(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(
        http, stack, "stopped-under-browsers", steps(30, tokens=5, token_delay_ms=60)
    )
    run_id = await start_run(http, stack, workflow["id"])  # the first browser starts it
    seen: list[list[int]] = [[] for _ in range(BROWSERS)]
    browsers = [asyncio.create_task(follow(stack, run_id, s)) for s in seen]

    async def fewest() -> int:
        return min(len(s) for s in seen)

    await eventually(fewest, lambda n: n >= 3, timeout_s=30, what="events on every stream")
    since = len(stack.log_text("gateway"))

    code = await stop_gateway(stack)
    ends = [await asyncio.wait_for(b, 30) for b in browsers]
    log = new_log(stack, since)
    await asyncio.to_thread(stack.start, "gateway")

    assert code == 0
    # Each stream got its last chunk: not cut mid-body when the graceful timeout ran out.
    assert ends == ["clean end"] * BROWSERS
    assert not [line for line in log.splitlines() if any(c in line for c in CRASHES)], log
    # EventSource reconnects with its Last-Event-ID: the rest, nothing lost, nothing twice.
    for before in seen:
        rest: list[int] = []
        assert await follow(stack, run_id, rest, after=before[-1]) == "clean end"
        run = await get_run(http, stack, run_id)
        assert run["status"] == ev.COMPLETED
        assert before + rest == list(range(1, run["last_seq"] + 1))


def trickled_post(
    port: int, body: bytes, headers: dict[str, str], meanwhile: Callable[[], None]
) -> bytes:
    """A POST whose head and first bytes are sent, then nothing until `meanwhile` returns:
    the answer, read to the connection's end."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            "POST /v1/workflows HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n"
        )
        sock.sendall(head.encode() + body[:10])
        meanwhile()
        answer = b""
        while data := sock.recv(65536):
            answer += data
        return answer


@pytest.mark.timeout(120)
async def test_a_slow_upload_cut_by_the_stop_gets_a_json_503(stack: ProcessStack) -> None:
    body = json.dumps({"name": "slow-upload", "steps": steps(1)}).encode()
    gateway = stack.procs["gateway"]
    since = len(stack.log_text("gateway"))
    codes: list[int | None] = []

    def stop() -> None:
        # The head is read (in far less than this): the request is in flight, and its body
        # does not come within the grace.
        time.sleep(1)
        gateway.send_signal(signal.SIGTERM)
        codes.append(gateway.wait(30))

    answer = await asyncio.to_thread(trickled_post, stack.gateway_port, body, stack.headers, stop)
    log = new_log(stack, since)
    await asyncio.to_thread(stack.start, "gateway")

    head, _, content = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = {name.lower(): value for name, _, value in (ln.partition(": ") for ln in lines[1:])}
    assert lines[0] == "HTTP/1.1 503 Service Unavailable", answer
    assert fields["content-type"] == "application/json"
    assert fields["retry-after"] == "1" and fields["connection"] == "close"
    assert json.loads(content)["error"]["code"] == "unavailable"
    assert codes == [0]
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log

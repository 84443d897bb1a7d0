"""Browsers that stop reading a big finished run hold a bounded part of its history in the
gateway, not all of it each, and are dropped once they take nothing for `sse_stall_s`; a
browser that reads still gets the whole stream, in order. Over real processes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from nyxflow import events as ev
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack, running_stack
from tests.support.sse_client import frames

STALLED = 12
STEPS = 10  # of about 1 MB of output each: a stream of about 20 MB
QUEUE_BYTES = 1024 * 1024  # what a browser may leave unread in the gateway
STALL_S = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    env = {"NYXFLOW_SSE_QUEUE_BYTES": str(QUEUE_BYTES), "NYXFLOW_SSE_STALL_S": str(STALL_S)}
    with running_stack("sqlite", tmp_path_factory.mktemp("stalled"), None, env) as stack:
        yield stack


@pytest.fixture
async def http(stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
        yield client


def rss_kb(stack: ProcessStack) -> int:
    for line in Path(f"/proc/{stack.procs['gateway'].pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def metric(http: httpx.AsyncClient, name: str) -> float:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


async def read_all(http: httpx.AsyncClient, stack: ProcessStack, run_id: str) -> list[int]:
    """Every seq of the run's stream, read to its end, as a browser that keeps reading."""
    seqs: list[int] = []
    async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=stack.headers) as r:
        assert r.status_code == 200
        async for frame in frames(r):
            if frame.event is not None:
                seqs.append(frame.seq)
    return seqs


async def stalled_tab(stack: ProcessStack, run_id: str) -> socket.socket:
    """A browser that asks for the run's events and then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.gateway_port))
    head = (
        f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {stack.headers['Authorization']}\r\n\r\n"
    )
    await asyncio.get_running_loop().sock_sendall(sock, head.encode())
    return sock


async def channels_gone(http: httpx.AsyncClient, stack: ProcessStack, within_s: float) -> None:
    """Paces the tabs: each on a channel of its own when the gateway finishes one quickly."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while (await http.get("/v1/debug/streams", headers=stack.headers)).json()["channels"]:
                await asyncio.sleep(0.05)


async def big_finished_run(http: httpx.AsyncClient, stack: ProcessStack) -> tuple[str, int]:
    text = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000]
    spec = [
        {
            "name": f"s{i}",
            "kind": "llm",
            "prompt": f"step {i}",
            "provider": "local",
            "params": {"script": text, "tokens": 20},
        }
        for i in range(STEPS)
    ]
    workflow = await create_workflow(http, stack, "big history", spec)
    run_id = await start_run(http, stack, workflow["id"])
    await read_all(http, stack, run_id)
    async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=stack.headers) as r:
        size = len(await r.aread())
    return run_id, size


async def test_stalled_browsers_hold_a_bounded_part_of_a_big_history_and_are_dropped(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    run_id, size = await big_finished_run(http, stack)
    last_seq = (await get_run(http, stack, run_id))["last_seq"]
    await channels_gone(http, stack, 10)
    before, peak = rss_kb(stack), 0
    tabs: list[socket.socket] = []
    try:
        for _ in range(STALLED):
            tabs.append(await stalled_tab(stack, run_id))
            await channels_gone(http, stack, 1)
            peak = max(peak, rss_kb(stack))
        held = await metric(http, "nyxflow_sse_unsent_bytes")
        # A browser that reads, alongside the stalled ones, gets all of it, in order.
        reading = asyncio.ensure_future(read_all(http, stack, run_id))
        while not reading.done():
            peak = max(peak, rss_kb(stack))
            await asyncio.sleep(0.1)
        assert reading.result() == list(range(1, last_seq + 1))
        # The stalled tabs are dropped (their EventSource would reconnect and lose nothing),
        # with their sockets still open: a hang detector, with a huge margin over STALL_S.
        async with asyncio.timeout(60):
            while await metric(http, "nyxflow_sse_clients"):
                peak = max(peak, rss_kb(stack))
                await asyncio.sleep(0.2)
    finally:
        for tab in tabs:
            tab.close()
    grown_mb = (peak - before) / 1024
    history_mb = size / 2**20
    print(f"history {history_mb:.1f} MB; gateway grew {grown_mb:.0f} MB; held {held:.0f} B")
    # Unpaced, each stalled tab held the whole history: STALLED x about 20 MB.
    assert grown_mb < STALLED * history_mb / 3, (grown_mb, history_mb)
    assert 0 < held < STALLED * size / 4
    assert (await get_run(http, stack, run_id))["status"] == ev.COMPLETED

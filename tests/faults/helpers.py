"""Small tools the fault scenarios share: direct SQL reads, timed SSE reads, gRPC clients,
the gateway's RSS and stream count."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata
from nyxflow.client import EngineClient, RunsClient, open_channel
from tests.faults.invariants import asyncpg_dsn
from tests.support.eventually import eventually
from tests.support.inprocess import API_KEY
from tests.support.processes import ProcessStack
from tests.support.sse_client import Frame, frames


@dataclass(frozen=True)
class Received:
    frame: Frame
    at: float  # time.time() when the client had it


async def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(asyncpg_dsn(dsn), timeout=10)
    try:
        return [dict(r) for r in await connection.fetch(sql, *args)]
    finally:
        await connection.close()


async def run_row(dsn: str, run_id: str) -> dict[str, Any]:
    rows = await fetch(dsn, "SELECT * FROM runs WHERE id = $1", run_id)
    assert rows, f"run {run_id} not in the database"
    return rows[0]


async def db_events(dsn: str, run_id: str) -> list[dict[str, Any]]:
    return await fetch(
        dsn, "SELECT seq, type, data FROM run_events WHERE run_id = $1 ORDER BY seq", run_id
    )


async def steps_done(dsn: str, run_id: str, count: int, within_s: float = 20.0) -> None:
    """Waits until the run has completed `count` steps (by its step_completed events)."""

    async def completed() -> int:
        rows = await fetch(
            dsn,
            "SELECT count(*) AS n FROM run_events WHERE run_id = $1 AND type = 'step_completed'",
            run_id,
        )
        return int(rows[0]["n"])

    await eventually(completed, lambda n: n >= count, timeout_s=within_s, what=f"{count} steps")


async def wait_status(
    dsn: str, run_id: str, statuses: frozenset[str], timeout_s: float
) -> dict[str, Any]:
    return await eventually(
        lambda: run_row(dsn, run_id),
        lambda r: r["status"] in statuses,
        timeout_s=timeout_s,
        interval_s=0.1,
        what=f"run {run_id} in {sorted(statuses)}",
    )


async def timed_events(
    http: httpx.AsyncClient, stack: ProcessStack, run_id: str, base_url: str | None = None
) -> list[Received]:
    """Every event frame of the run's SSE stream, with its arrival time, until it closes."""
    url = f"{base_url or stack.base_url}/v1/runs/{run_id}/events"
    received: list[Received] = []
    async with http.stream("GET", url, headers=stack.headers) as response:
        assert response.status_code == 200, await response.aread()
        async for frame in frames(response):
            if frame.event is not None:
                received.append(Received(frame, time.time()))
    return received


def assert_full_stream(received: list[Frame] | list[Received], last_seq: int, end: str) -> None:
    """Exactly seq 1..last_seq, in order, ending with the `end` event."""
    got = [r.frame if isinstance(r, Received) else r for r in received]
    seqs = [f.seq for f in got]
    assert seqs == list(range(1, last_seq + 1)), f"seqs {seqs} != 1..{last_seq}"
    assert got[-1].event == end, f"stream ended with {got[-1].event}, not {end}"


@contextlib.asynccontextmanager
async def grpc_clients(
    runs_addr: str, *engine_addrs: str
) -> AsyncIterator[tuple[RunsClient, list[EngineClient]]]:
    """Runs and engine clients with the API key, as the CLI would call them."""
    metadata = bearer_metadata(API_KEY)
    channels = [open_channel(runs_addr), *(open_channel(a) for a in engine_addrs)]
    try:
        yield (
            RunsClient(channels[0], metadata),
            [EngineClient(c, metadata) for c in channels[1:]],
        )
    finally:
        for channel in channels:
            await channel.close()


async def start_on_engine(engine: EngineClient, run_id: str) -> None:
    """Execute `run_id` on that engine and stop listening after run_started: the run goes on."""
    source = engine.execute(run_id)
    try:
        async for event in source:
            if event.type == ev.RUN_STARTED:
                return
    finally:
        await source.aclose()


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def debug_streams(http: httpx.AsyncClient, stack: ProcessStack, base_url: str) -> Any:
    response = await http.get(f"{base_url}/v1/debug/streams", headers=stack.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def db_clock(dsn: str) -> float:
    """The database's clock, as epoch seconds: the clock every lease, event and end is stamped
    with, so a deadline measured against it leaves out the test's polling."""
    rows = await fetch(
        dsn, "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION) AS now"
    )
    return float(rows[0]["now"])


def log_entries(text: str, msg: str) -> list[dict[str, Any]]:
    """The JSON log lines of `text` whose message is `msg`."""
    found = []
    for line in text.splitlines():
        if line.startswith("{") and f'"{msg}"' in line:
            entry = json.loads(line)
            if entry.get("msg") == msg:
                found.append(entry)
    return found


def engine_id(stack: ProcessStack, name: str) -> str:
    """The id a running engine process claims runs under (its default: host and pid)."""
    return f"engine-{socket.gethostname()}-{stack.procs[name].pid}"


async def db_events_at(dsn: str, run_id: str) -> list[dict[str, Any]]:
    """`db_events` with each event's `created_at`: the database's clock when it was written."""
    return await fetch(
        dsn,
        "SELECT seq, type, data, created_at FROM run_events WHERE run_id = $1 ORDER BY seq",
        run_id,
    )

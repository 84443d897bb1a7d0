"""PostgreSQL restarted, Redis stopped and the runs service restarted mid-run: every run ends
completed or failed with its error stored, streams stay whole, and new runs work after."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nyxflow import events as ev
from tests.faults.conftest import LIMITS, TIMEOUT, shared_redis_url
from tests.faults.helpers import (
    Received,
    assert_full_stream,
    fetch,
    grpc_clients,
    run_row,
    start_on_engine,
    timed_events,
    wait_status,
)
from tests.faults.infra import OwnPostgres, OwnRedis, own_postgres, own_redis, stack_on
from tests.faults.invariants import assert_invariants
from tests.support.databases import fresh_database
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.ports import free_port
from tests.support.processes import LEASE_TTL_S, ProcessStack

FINISHED = frozenset(ev.FINISHED_RUN_STATUSES)
# The engine retries writes for NYXFLOW_WRITE_RETRY_S (30 s): runs must settle well before.
SETTLE_S = 40.0


async def _completed_steps(dsn: str, run_id: str) -> int:
    rows = await fetch(
        dsn,
        "SELECT count(*) AS n FROM run_events WHERE run_id = $1 AND type = 'step_completed'",
        run_id,
    )
    return int(rows[0]["n"])


async def _check_stream(dsn: str, run_id: str, received: list[Received]) -> dict[str, object]:
    """The run is finished, its error stored if it failed, and the stream was whole."""
    run = await run_row(dsn, run_id)
    assert run["status"] in (ev.COMPLETED, ev.FAILED), run
    if run["status"] == ev.FAILED:
        assert run["error"], run
    assert_full_stream(received, run["last_seq"], ev.TERMINAL_EVENT_FOR_STATUS[run["status"]])
    return run


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    with own_postgres() as cluster:
        yield cluster


@pytest.mark.timeout(150)
async def test_postgresql_restarted_mid_run(own_pg: OwnPostgres, tmp_path: Path) -> None:
    await _runs_across_an_outage(own_pg, tmp_path, "restart", own_pg.restart_fast)


# Long enough that every lease has run out by the database's clock before it is back: the
# engine can renew none meanwhile, so each run's fate is decided by who gets there first, the
# sweeper or the engine's retried heartbeat.
DOWN_S = 3 * LEASE_TTL_S


@pytest.mark.timeout(170)
async def test_postgresql_down_past_the_lease(own_pg: OwnPostgres, tmp_path: Path) -> None:
    def outage() -> None:
        own_pg.ctl("-m", "fast", "-w", "stop")
        time.sleep(DOWN_S)
        own_pg.start()

    await _runs_across_an_outage(own_pg, tmp_path, "down", outage)


async def _runs_across_an_outage(
    own_pg: OwnPostgres, tmp_path: Path, name: str, outage: Callable[[], None]
) -> None:
    """Three runs two steps in when PostgreSQL goes (`outage`, in a thread): each ends
    completed, or failed with its error stored, its stream whole; then a new run completes."""
    with stack_on(own_pg.url, tmp_path, shared_redis_url(), {}) as stack:
        dsn = stack.database_url
        async with httpx.AsyncClient(
            base_url=stack.base_url, timeout=TIMEOUT, limits=LIMITS
        ) as http:
            run_ids = []
            for i in range(3):
                workflow = await create_workflow(
                    http, stack, f"pg-{name}-{i}", steps(15, tokens=5, token_delay_ms=20)
                )
                run_ids.append(await start_run(http, stack, workflow["id"]))
            readers = [asyncio.create_task(timed_events(http, stack, r)) for r in run_ids]
            for run_id in run_ids:
                await eventually(
                    lambda r=run_id: _completed_steps(dsn, r),  # type: ignore[misc]
                    lambda n: n >= 2,
                    timeout_s=20,
                    what=f"two steps done before the {name}",
                )
            for run_id in run_ids:
                assert (await run_row(dsn, run_id))["status"] == ev.RUNNING
            await asyncio.to_thread(outage)

            for run_id, reader in zip(run_ids, readers, strict=True):
                await wait_status(dsn, run_id, FINISHED, SETTLE_S)
                received = await asyncio.wait_for(reader, 20)
                run = await _check_stream(dsn, run_id, received)
                print(f"run across the {name}: {run['status']} {run['error']!r}")
            await assert_invariants(dsn)

            # The stack is healthy again: a new run completes.
            workflow = await create_workflow(http, stack, f"pg-{name}-after", steps(3, tokens=5))
            run_id = await start_run(http, stack, workflow["id"])
            received = await timed_events(http, stack, run_id)
            run = await _check_stream(dsn, run_id, received)
            assert run["status"] == ev.COMPLETED
            await assert_invariants(dsn)


@pytest.fixture
def redis_server() -> Iterator[OwnRedis]:
    with own_redis() as server:
        yield server


async def _followers(
    http: httpx.AsyncClient, stack: ProcessStack, run_id: str, count: int
) -> list[asyncio.Task[list[Received]]]:
    return [asyncio.create_task(timed_events(http, stack, run_id)) for _ in range(count)]


@pytest.mark.timeout(150)
async def test_redis_stopped_mid_run_watchers_poll_then_stream_live_again(
    redis_server: OwnRedis, tmp_path: Path
) -> None:
    # The engine writes through `runs`; the gateway follows through `runs2`, which hears of
    # those writes only over Redis, or by polling the database (every 2 s here) without it.
    poll_s = 2.0
    runs2 = f"127.0.0.1:{free_port()}"
    replicas = {
        "runs2": {"NYXFLOW_RUNS_LISTEN": runs2, "NYXFLOW_WATCH_POLL_S": str(poll_s)},
        "gateway": {"NYXFLOW_RUNS_ADDR": runs2},
    }
    async with fresh_database("postgresql", tmp_path) as url:
        with stack_on(url, tmp_path, redis_server.url, replicas) as stack:
            await _redis_then_polling_then_live(stack, redis_server, poll_s)


async def _redis_then_polling_then_live(
    stack: ProcessStack, redis_server: OwnRedis, poll_s: float
) -> None:
    """One run followed through it all: live, then polled while Redis is down (no event
    lost), then live again on the same streams once Redis is back."""
    dsn = stack.database_url
    await _both_on_redis(redis_server)
    async with (
        httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT, limits=LIMITS) as http,
        grpc_clients(stack.runs_addr, stack.engine_addr) as (_, engines),
    ):
        workflow = await create_workflow(
            http, stack, "redis-down", steps(60, tokens=10, token_delay_ms=30)
        )
        run_id = await start_run(http, stack, workflow["id"])
        # Started on the engine directly, so the gateway's browsers follow it via WatchRun.
        await start_on_engine(engines[0], run_id)
        followers = await _followers(http, stack, run_id, 3)
        await _steps_done(dsn, run_id, 2, "two steps streamed live")
        await asyncio.to_thread(redis_server.stop)
        stopped_at = time.time()
        done = await _completed_steps(dsn, run_id)
        await _steps_done(dsn, run_id, done + 4, "four steps done while Redis is down")

        await asyncio.to_thread(redis_server.start)
        await _both_on_redis(redis_server)
        back_at = time.time()
        assert (await run_row(dsn, run_id))["status"] == ev.RUNNING, "the run ended too soon"
        run = await wait_status(dsn, run_id, FINISHED, 60)
        assert run["status"] == ev.COMPLETED
        for follower in followers:
            received = await asyncio.wait_for(follower, 30)  # polling only: the run has ended
            assert_full_stream(received, run["last_seq"], ev.RUN_COMPLETED)
            polled = [r for r in received if stopped_at < r.frame.json["at"] < back_at]
            assert polled, "no event was made while Redis was down"
            # Read from the database meanwhile: events waited for the next poll.
            assert max(r.at - r.frame.json["at"] for r in polled) > poll_s / 4
            # Live again, not polled: once Redis is back (and a poll's worth later, for the
            # watch to hear of it), an event reaches the browser far sooner than a poll.
            after = [r for r in received if r.frame.json["at"] > back_at + poll_s]
            assert len(after) >= 20, f"only {len(after)} events after Redis came back"
            lag = statistics.median(r.at - r.frame.json["at"] for r in after)
            assert lag < poll_s / 4, f"median lag {lag:.2f} s after Redis came back"
    await assert_invariants(dsn)


async def _both_on_redis(redis_server: OwnRedis) -> None:
    await eventually(
        lambda: asyncio.to_thread(redis_server.bus_readers),
        lambda n: n >= 2,
        timeout_s=10,
        what="both runs replicas subscribed to Redis",
    )


async def _steps_done(dsn: str, run_id: str, count: int, what: str) -> None:
    await eventually(
        lambda: _completed_steps(dsn, run_id), lambda n: n >= count, timeout_s=20, what=what
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("followed_through", ["Execute", "WatchRun"])
async def test_runs_service_restarted_mid_run(
    http: httpx.AsyncClient, stack: ProcessStack, followed_through: str
) -> None:
    """Browsers follow the run through the engine's Execute (their gateway started it), or
    through runs' WatchRun (it was started on the engine directly): the latter's streams go
    through the very service being restarted."""
    dsn = stack.database_url
    workflow = await create_workflow(
        http, stack, f"runs-restart-{followed_through}", steps(20, tokens=5, token_delay_ms=20)
    )
    run_id = await start_run(http, stack, workflow["id"])
    if followed_through == "WatchRun":
        async with grpc_clients(stack.runs_addr, stack.engine_addr) as (_, engines):
            await start_on_engine(engines[0], run_id)
    readers = [asyncio.create_task(timed_events(http, stack, run_id)) for _ in range(3)]
    await eventually(
        lambda: _completed_steps(dsn, run_id),
        lambda n: n >= 3,
        timeout_s=20,
        what="three steps done before the restart",
    )
    assert (await run_row(dsn, run_id))["status"] == ev.RUNNING
    await asyncio.to_thread(stack.kill, "runs")
    # Down until the engine has backed off four times (its fourth wait is 0.8 s): a restart
    # quicker than the backoff (a warm machine's) would show no backoff to check.
    await eventually(
        lambda: asyncio.to_thread(_retries, stack, run_id),
        lambda found: any(r["attempt"] >= 4 for r in found),
        timeout_s=20,
        what="the engine's fourth retry",
    )
    await asyncio.to_thread(stack.start, "runs")
    await wait_status(dsn, run_id, FINISHED, SETTLE_S)
    for reader in readers:
        await _check_stream(dsn, run_id, await asyncio.wait_for(reader, 20))
    # Retried with backoff: a call's first wait is 0.1 s, its fourth 0.8 s, each jittered by
    # half either way.
    retries = _retries(stack, run_id)
    first = [r["retry_in_s"] for r in retries if r["attempt"] == 1]
    later = [r["retry_in_s"] for r in retries if r["attempt"] >= 4]
    assert first and later, retries
    assert max(first) <= 0.15 and min(later) >= 0.4, (first, later)
    await assert_invariants(dsn)


def _retries(stack: ProcessStack, run_id: str) -> list[dict[str, Any]]:
    """The engine's logged retries of its calls to runs for `run_id`."""
    return [
        line
        for line in map(_json_line, stack.log_text("engine").splitlines())
        if line.get("msg") == "runs unavailable, retrying" and line.get("run_id") == run_id
    ]


def _json_line(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

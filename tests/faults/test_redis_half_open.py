"""Redis connections that go silent without closing (a NAT or load balancer that forgot them,
a host that vanished, a failover behind one address): the runs replicas notice, connect
again, and their watchers stream live again, not by polling for good."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import pytest

from nyxflow import events as ev
from tests.faults.conftest import LIMITS, TIMEOUT
from tests.faults.helpers import (
    assert_full_stream,
    grpc_clients,
    start_on_engine,
    steps_done,
    timed_events,
    wait_status,
)
from tests.faults.infra import own_redis, stack_on
from tests.faults.invariants import assert_invariants
from tests.faults.relay import relay_to
from tests.support.databases import fresh_database
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.ports import free_port

POLL_S = 2.0  # runs2's watchers poll this often without Redis
# Silent connections must be noticed and replaced well within this (bus.REDIS_TIMEOUT_S 5 s:
# a ping after 5 s of quiet, given up 5 s later), plus a poll for the watch to hear of it.
RECOVER_S = 20.0


@pytest.mark.timeout(150)
async def test_silent_redis_connections_are_replaced_and_watchers_stream_live_again(
    tmp_path: Path,
) -> None:
    runs2 = f"127.0.0.1:{free_port()}"
    replicas = {
        "runs2": {"NYXFLOW_RUNS_LISTEN": runs2, "NYXFLOW_WATCH_POLL_S": str(POLL_S)},
        "gateway": {"NYXFLOW_RUNS_ADDR": runs2},
    }
    with own_redis() as server, relay_to(server.port) as relay:
        async with fresh_database("postgresql", tmp_path) as url:
            with stack_on(url, tmp_path, relay.url, replicas) as stack:
                dsn = stack.database_url
                await eventually(
                    lambda: asyncio.to_thread(server.bus_readers),
                    lambda n: n >= 2,
                    timeout_s=10,
                    what="both runs replicas subscribed to Redis",
                )
                async with (
                    httpx.AsyncClient(
                        base_url=stack.base_url, timeout=TIMEOUT, limits=LIMITS
                    ) as http,
                    grpc_clients(stack.runs_addr, stack.engine_addr) as (_, engines),
                ):
                    # The engine writes through `runs`; the browser follows through `runs2`,
                    # which hears of those writes over Redis, or by polling without it.
                    workflow = await create_workflow(
                        http, stack, "redis-silent", steps(150, tokens=10, token_delay_ms=30)
                    )
                    run_id = await start_run(http, stack, workflow["id"])
                    await start_on_engine(engines[0], run_id)
                    follower = asyncio.create_task(timed_events(http, stack, run_id))
                    await steps_done(dsn, run_id, 2)
                    relay.cut()
                    cut_at = time.time()
                    run = await wait_status(dsn, run_id, frozenset(ev.FINISHED_RUN_STATUSES), 90)
                    assert run["status"] == ev.COMPLETED, run
                    received = await asyncio.wait_for(follower, 30)
                assert_full_stream(received, run["last_seq"], ev.RUN_COMPLETED)
                later = [r for r in received if r.frame.json["at"] > cut_at + RECOVER_S]
                assert len(later) >= 20, f"only {len(later)} events after the cut's recovery"
                lag = statistics.median(r.at - r.frame.json["at"] for r in later)
                # Polled, every event waits half a poll on average; live, a few milliseconds.
                assert lag < POLL_S / 4, f"median lag {lag:.2f} s: still polling, not live"
                await assert_invariants(dsn)

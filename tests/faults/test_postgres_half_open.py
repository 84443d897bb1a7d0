"""PostgreSQL connections that go silent without closing (a NAT or load balancer that forgot
them, a database host frozen or gone): queries on them give up after NYXFLOW_DATABASE_TIMEOUT_S,
so the orphan sweeper goes on and a run whose engine died is still swept."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nyxflow import events as ev
from tests.faults.conftest import LIMITS, TIMEOUT
from tests.faults.helpers import grpc_clients, start_on_engine, steps_done, wait_status
from tests.faults.infra import own_postgres, own_redis, stack_on
from tests.faults.invariants import assert_invariants
from tests.faults.relay import relay_to
from tests.support.gateway_api import create_workflow, start_run, steps

TIMEOUT_S = 3.0  # runs' NYXFLOW_DATABASE_TIMEOUT_S here
# Swept once a query on a silent connection gives up, and the next finds a live one: without
# the timeout, the sweeper waited on its silent connection for good.
SWEPT_WITHIN_S = 60.0


@pytest.mark.timeout(150)
async def test_silent_database_connections_do_not_stop_the_sweeper(tmp_path: Path) -> None:
    with own_postgres() as cluster, own_redis() as redis, relay_to(cluster.port) as relay:
        # The services reach the database through the relay; the test reads it directly.
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{relay.port}/postgres"
        replicas = {"runs": {"NYXFLOW_DATABASE_TIMEOUT_S": str(TIMEOUT_S)}}
        with stack_on(url, tmp_path, redis.url, replicas) as stack:
            dsn = cluster.url
            async with (
                httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT, limits=LIMITS) as http,
                grpc_clients(stack.runs_addr, stack.engine_addr) as (_, engines),
            ):
                workflow = await create_workflow(
                    http, stack, "pg-silent", steps(400, tokens=5, token_delay_ms=20)
                )
                run_id = await start_run(http, stack, workflow["id"])
                await start_on_engine(engines[0], run_id)  # no one follows it
                await steps_done(dsn, run_id, 2)
                # Its engine gone, the run is the sweeper's to end; then every connection runs
                # holds goes silent, the sweeper's among them.
                stack.kill("engine")
                relay.cut()
                run = await wait_status(
                    dsn, run_id, frozenset(ev.FINISHED_RUN_STATUSES), SWEPT_WITHIN_S
                )
            assert run["status"] == ev.FAILED and "orphaned" in run["error"], run
            await assert_invariants(dsn)

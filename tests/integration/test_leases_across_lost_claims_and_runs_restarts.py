"""Leases judged fairly: a claim won back by its retry is leased from then, and a restart of
runs longer than a lease fails none of the runs whose engines are alive."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.errors import Unavailable
from nyxflow.v1 import runs_pb2
from nyxflow_runs.servicer import RunsServicer
from nyxflow_runs.settings import RunsSettings
from tests.support.inprocess import clients, engine_service, runs_service
from tests.support.ports import free_port
from tests.support.workflows import llm_step

LEASE_TTL_S = 3.0


async def test_a_claim_won_again_late_is_not_swept_while_its_engine_works(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runs commits the claim, then its answer is lost after a while (runs restarting, a
    deadline): the engine's retry wins the claim back (same claim id) and starts executing,
    heartbeating from then on. The lease ran from the first commit, so it lapsed before the
    first heartbeat and the sweeper failed a live run as an orphan."""
    original = RunsServicer.ClaimRun
    calls = 0

    async def loses_the_first_answer_late(
        self: RunsServicer, request: runs_pb2.ClaimRunRequest, context: Any
    ) -> runs_pb2.ClaimRunResponse:
        nonlocal calls
        calls += 1
        response = await original(self, request, context)  # committed, lease = now + ttl
        if calls == 1:
            await asyncio.sleep(2.6)  # within the 3 s lease, within write_retry_s
            raise Unavailable("the answer was lost")
        return response

    monkeypatch.setattr(RunsServicer, "ClaimRun", loses_the_first_answer_late)
    async with (
        runs_service(database_url) as runs_settings,
        engine_service(runs_settings.runs_listen, lease_ttl_s=3.0, heartbeat_s=1.0) as eng,
        clients(runs_settings.runs_listen, eng.engine_listen) as api,
    ):
        assert api.engine is not None
        steps = [llm_step("one", "x", tokens=30, token_delay_ms=100)]
        workflow = await api.runs.create_workflow("late-claim", steps)
        run = await api.runs.create_run(workflow.id)
        _ = [e async for e in api.engine.execute(run.id)]
        stored = await api.runs.get_run(run.id)
    assert calls == 2
    assert stored.status == ev.COMPLETED, (stored.status, stored.error)


async def test_a_runs_restart_longer_than_the_lease_does_not_orphan_live_runs(
    database_url: str,
) -> None:
    """The only runs service restarts (a deploy, a rescheduled pod) and is away a little
    longer than the lease's TTL; the engine is alive throughout, retrying its writes (within
    write_retry_s) and heartbeating. The restarted sweeper's first pass judged by the
    database's clock alone and failed the live run as `orphaned: lease expired`: every run in
    flight was lost to a restart of the runs service, though no engine died. Each running
    lease is now given NYXFLOW_SWEEP_START_GRACE_S at start."""
    listen = f"127.0.0.1:{free_port()}"
    first = runs_service(database_url, runs_listen=listen)
    await first.__aenter__()
    serving: list[contextlib.AbstractAsyncContextManager[RunsSettings]] = [first]
    try:
        async with (
            engine_service(
                listen, lease_ttl_s=LEASE_TTL_S, heartbeat_s=0.5, write_retry_s=20.0
            ) as eng,
            clients(listen, eng.engine_listen) as api,
        ):
            assert api.engine is not None
            steps = [llm_step(f"s{i}", "x", tokens=20, token_delay_ms=100) for i in range(4)]
            workflow = await api.runs.create_workflow("runs-restart", steps)
            run = await api.runs.create_run(workflow.id)
            execute = api.engine.execute(run.id)
            following = asyncio.create_task(asyncio.wait_for(_drain(execute), 60))
            await asyncio.sleep(1.0)
            assert (await api.runs.get_run(run.id)).status == ev.RUNNING
            await serving.pop().__aexit__(None, None, None)
            await asyncio.sleep(3.5)  # away a little past the 3 s lease, well within 20 s
            restarted = runs_service(
                database_url,
                runs_listen=listen,
                migrate_on_start=False,
                sweep_start_grace_s=LEASE_TTL_S,  # as documented: the engines' TTL
            )
            await restarted.__aenter__()
            serving.append(restarted)
            with contextlib.suppress(Exception):
                await following
            for _ in range(300):
                stored = await api.runs.get_run(run.id)
                if stored.status not in ev.ACTIVE_RUN_STATUSES:
                    break
                await asyncio.sleep(0.1)
    finally:
        for service in serving:
            await service.__aexit__(None, None, None)
    assert stored.status == ev.COMPLETED, (stored.status, stored.error)


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass

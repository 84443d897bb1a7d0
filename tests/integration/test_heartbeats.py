"""The lease's renewal under a stalled runs service: one heartbeat that never answers must
not cost a healthy run its lease."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.v1 import runs_pb2
from nyxflow_runs.servicer import RunsServicer
from tests.support.inprocess import clients, engine_service, runs_service
from tests.support.workflows import llm_step

# A lease that a stall of a loaded machine between two heartbeats does not lapse.
TTL_S = 3.0
HEARTBEAT_S = 0.3


async def test_a_heartbeat_that_never_answers_is_given_up_in_time_to_renew(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first Heartbeat hangs in runs (a stalled replica, a half-open connection). The
    engine's RPC timeout (10 s) is far past the lease (3 s): waiting it out would let the
    sweeper fail a run whose engine is alive. The engine gives the call up and renews."""
    original = RunsServicer.Heartbeat
    hung = asyncio.Event()
    release = asyncio.Event()

    async def hangs_once(
        self: RunsServicer, request: runs_pb2.HeartbeatRequest, context: Any
    ) -> runs_pb2.HeartbeatResponse:
        if not hung.is_set():
            hung.set()
            await release.wait()  # until the test ends, or the caller gives up
        return await original(self, request, context)

    # Before the service starts: its handlers are bound when it registers them.
    monkeypatch.setattr(RunsServicer, "Heartbeat", hangs_once)
    async with (
        runs_service(database_url, sweep_interval_s=0.1) as runs_settings,
        engine_service(
            runs_settings.runs_listen, lease_ttl_s=TTL_S, heartbeat_s=HEARTBEAT_S
        ) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
    ):
        assert api.engine is not None
        try:
            # One step of 4.5 s: more than the lease, so only renewals keep the run.
            step = llm_step("long", "x", tokens=45, token_delay_ms=100)
            workflow = await api.runs.create_workflow("stalled-heartbeat", [step])
            run = await api.runs.create_run(workflow.id)
            events = [e async for e in api.engine.execute(run.id)]
        finally:
            release.set()
        assert hung.is_set(), "no heartbeat was sent"
        stored = await api.runs.get_run(run.id)
        assert (stored.status, stored.error) == (ev.COMPLETED, ""), stored
        assert events[-1].type == ev.RUN_COMPLETED


async def test_a_heartbeat_refused_after_the_run_ended_does_not_cut_its_end_short(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's end commits, and a heartbeat reaches runs before the engine has the end's
    answer: that heartbeat is refused (the run is no longer running). Taking it for a lost
    lease would cancel the execution as it awaits the answer, and the Execute stream would end
    without its run_completed though the run completed."""
    original = RunsServicer.RecordMany

    async def answers_the_end_late(
        self: RunsServicer, request: runs_pb2.RecordManyRequest, context: Any
    ) -> runs_pb2.RecordManyResponse:
        response = await original(self, request, context)
        if any(b.finish_status for b in request.batches):
            await asyncio.sleep(6 * HEARTBEAT_S)  # committed; the answer is on its way
        return response

    monkeypatch.setattr(RunsServicer, "RecordMany", answers_the_end_late)
    async with (
        runs_service(database_url) as runs_settings,
        engine_service(
            runs_settings.runs_listen, lease_ttl_s=TTL_S, heartbeat_s=HEARTBEAT_S
        ) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
    ):
        assert api.engine is not None
        workflow = await api.runs.create_workflow("late-end", [llm_step("one", "x", tokens=3)])
        run = await api.runs.create_run(workflow.id)
        events = [e async for e in api.engine.execute(run.id)]
        stored = await api.runs.get_run(run.id)
        assert stored.status == ev.COMPLETED
        assert events[-1].type == ev.RUN_COMPLETED, [e.type for e in events]

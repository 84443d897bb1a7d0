"""A run cancelled while its engine is mid-step may have its project moved (or its workflow
deleted) at once: it is no longer active. The engine's next heartbeat then answers NOT_FOUND
(the run is another tenant's now), which the engine took for a passing failure and ran the
step on to its end. It stops as a cancelled run's engine does: the lease is lost."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient
from nyxflow.errors import NyxflowError
from nyxflow.v1 import runs_pb2
from nyxflow_engine.providers.base import Completion, CompletionRequest, OnDelta
from nyxflow_engine.providers.local import LocalProvider
from nyxflow_runs.servicer import RunsServicer
from tests.support.inprocess import ADMIN_KEY, clients, engine_service, runs_service
from tests.support.workflows import llm_step

HEARTBEAT_S = 0.3
# Stopped at a heartbeat or two, well before the step's end (20 s): the wait leaves room for
# a stall of a loaded machine, and still fails an engine that runs the step on to its end.
STOP_WITHIN_S = 8.0


async def test_an_engine_stops_a_step_whose_run_was_cancelled_and_moved(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()
    complete = LocalProvider.complete

    async def watched(self: LocalProvider, request: CompletionRequest, on: OnDelta) -> Completion:
        started.set()
        try:
            return await complete(self, request, on)
        finally:
            stopped.set()

    # No heartbeat between the cancel and the move: one there would be refused as stale
    # (the run is no longer running), which the engine already stops on.
    beats_open = asyncio.Event()
    beats_open.set()
    heartbeat = RunsServicer.Heartbeat

    async def gated(
        self: RunsServicer, request: runs_pb2.HeartbeatRequest, context: Any
    ) -> runs_pb2.HeartbeatResponse:
        await beats_open.wait()
        return await heartbeat(self, request, context)

    monkeypatch.setattr(LocalProvider, "complete", watched)
    monkeypatch.setattr(RunsServicer, "Heartbeat", gated)  # before the service registers it
    async with (
        runs_service(database_url) as rs,
        engine_service(
            rs.runs_listen,
            heartbeat_s=HEARTBEAT_S,
            delta_flush_ms=100_000,  # the step writes nothing more until its end
        ) as es,
        clients(rs.runs_listen, es.engine_listen) as api,
    ):
        assert api.engine is not None
        project = await api.runs.create_project(f"p-{uuid.uuid4().hex[:6]}")
        # One step of 20 s, far longer than the test waits for it to stop.
        step = llm_step("long", "x", tokens=200, token_delay_ms=100)
        workflow = await api.runs.create_workflow("moved", [step], project_id=project.id)
        run = await api.runs.create_run(workflow.id)

        async def follow() -> None:
            # The stream ends as the key no longer sees the run: that is not what is tested.
            with contextlib.suppress(NyxflowError):
                async for _ in api.engine.execute(run.id):  # type: ignore[union-attr]
                    pass

        following = asyncio.ensure_future(follow())
        try:
            await asyncio.wait_for(started.wait(), 10)
            beats_open.clear()
            await api.runs.cancel_run(run.id)
            admin = AdminClient(api.runs_channel, bearer_metadata(ADMIN_KEY))
            slug = f"b-{uuid.uuid4().hex[:8]}"
            await admin.create_tenant(slug)
            await admin.move_project(project.id, slug)  # allowed: the run is not active
            beats_open.set()
            # Stopped at a heartbeat or two, not at the step's end 20 s on.
            await asyncio.wait_for(stopped.wait(), STOP_WITHIN_S)
        finally:
            beats_open.set()
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

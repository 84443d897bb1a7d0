"""An engine draining (SIGTERM) as a run's end is on its way: the end lands, and the run's
Execute stream carries it before it closes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.servicer import RunsServicer
from tests.support.inprocess import clients, engine_service, runs_service
from tests.support.workflows import llm_step

ANSWER_DELAY_S = 1.0  # well within the engine's grace (3 s)


async def test_a_drain_while_the_end_is_answered_keeps_the_end_in_the_stream(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end has committed and its answer is late when the engine starts draining. Pausing
    that run would cancel the wait for the answer: the release is then refused (the run has
    ended) and the stream closes without run_completed, though the run completed."""
    original = RunsServicer.RecordMany
    end_sent = asyncio.Event()

    async def answers_the_end_late(
        self: RunsServicer, request: runs_pb2.RecordManyRequest, context: Any
    ) -> runs_pb2.RecordManyResponse:
        response = await original(self, request, context)
        if any(b.finish_status for b in request.batches):
            end_sent.set()
            await asyncio.sleep(ANSWER_DELAY_S)
        return response

    monkeypatch.setattr(RunsServicer, "RecordMany", answers_the_end_late)
    stop = asyncio.Event()
    async with (
        runs_service(database_url) as runs_settings,
        engine_service(runs_settings.runs_listen, stop=stop) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
    ):
        assert api.engine is not None
        engine = api.engine
        steps = [
            llm_step("one", "x", tokens=3),
            llm_step("two", "{{ steps.one.output }}", tokens=3),
        ]
        workflow = await api.runs.create_workflow("drain-at-the-end", steps)
        run = await api.runs.create_run(workflow.id)

        async def follow() -> list[pb.RunEvent]:
            return [e async for e in engine.execute(run.id)]

        following = asyncio.create_task(follow())
        await asyncio.wait_for(end_sent.wait(), 10)
        stop.set()  # the drain starts while the end's answer is on its way
        events = await asyncio.wait_for(following, 10)
        stored = await api.runs.get_run(run.id)
    assert stored.status == ev.COMPLETED, (stored.status, stored.error)
    types = [e.type for e in events]
    assert types[-1] == ev.RUN_COMPLETED, types
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

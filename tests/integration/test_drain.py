"""An engine draining (SIGTERM) as a run's end is on its way: the end lands, and the run's
Execute stream carries it before it closes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.errors import Unavailable
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.servicer import RunsServicer
from tests.support.inprocess import clients, engine_service, runs_and_engine, runs_service
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
    async with runs_and_engine(database_url, stop=stop) as api:
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


async def test_a_draining_engine_starts_nothing_new(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run claimed once the drain has taken its list would be neither paused nor handed
    over; the start is refused as UNAVAILABLE and the run stays pending for another replica."""
    original = RunsServicer.ReleaseRun
    releasing = asyncio.Event()

    async def releases_late(
        self: RunsServicer, request: runs_pb2.ReleaseRunRequest, context: Any
    ) -> runs_pb2.ReleaseRunResponse:
        releasing.set()
        await asyncio.sleep(ANSWER_DELAY_S)  # the drain is waiting on this
        return await original(self, request, context)

    monkeypatch.setattr(RunsServicer, "ReleaseRun", releases_late)
    stop = asyncio.Event()
    async with runs_and_engine(database_url, stop=stop) as api:
        assert api.engine is not None
        engine = api.engine
        slow = await api.runs.create_workflow(
            "slow", [llm_step("slow", "x", tokens=20, token_delay_ms=50)]
        )
        later = await api.runs.create_workflow("later", [llm_step("one", "x", tokens=3)])
        busy = await api.runs.create_run(slow.id)
        waiting = await api.runs.create_run(later.id)
        events = engine.execute(busy.id)
        assert (await anext(events)).type == ev.RUN_STARTED
        stop.set()
        await asyncio.wait_for(releasing.wait(), 10)  # the drain has begun
        with pytest.raises(Unavailable):
            async for _ in engine.execute(waiting.id):
                pass
        rest = [e.type async for e in events]
        assert rest[-1] == ev.RUN_PAUSED, rest
        assert (await api.runs.get_run(waiting.id)).status == ev.PENDING


async def test_an_engine_shuts_down_within_its_grace(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim on its way, a run whose pause is slow to be recorded and its open Execute call
    each had a grace of their own: an engine given 1 s took nearly 3, past the time a
    supervisor waits before SIGKILL. Given 3 s here: a stall of a loaded machine (2 s) fits
    between the grace and the time the drain alone took with a grace per wait (1.8 x)."""
    grace_s = 3.0
    claim, release = RunsServicer.ClaimRun, RunsServicer.ReleaseRun
    claiming = asyncio.Event()

    async def claims_late(self: RunsServicer, request: Any, context: Any) -> Any:
        if request.run_id == late_id:
            claiming.set()
            await asyncio.sleep(0.8 * grace_s)
        return await claim(self, request, context)

    async def releases_late(self: RunsServicer, request: Any, context: Any) -> Any:
        await asyncio.sleep(5 * grace_s)
        return await release(self, request, context)

    monkeypatch.setattr(RunsServicer, "ClaimRun", claims_late)
    monkeypatch.setattr(RunsServicer, "ReleaseRun", releases_late)
    late_id = ""
    stop = asyncio.Event()
    async with (
        runs_service(database_url) as runs_settings,
        clients(runs_settings.runs_listen) as api,
    ):
        slow = await api.runs.create_workflow(
            "slow", [llm_step("slow", "x", tokens=200, token_delay_ms=20)]
        )
        busy = await api.runs.create_run(slow.id)
        late_id = (
            await api.runs.create_run(
                (await api.runs.create_workflow("late", [llm_step("one", "x")])).id
            )
        ).id
        async with (
            engine_service(
                runs_settings.runs_listen, stop=stop, shutdown_grace_s=grace_s
            ) as engine_settings,
            clients(runs_settings.runs_listen, engine_settings.engine_listen) as calls,
        ):
            assert calls.engine is not None
            events = calls.engine.execute(busy.id)
            assert (await anext(events)).type == ev.RUN_STARTED
            starting = asyncio.create_task(anext(calls.engine.execute(late_id)))
            await asyncio.wait_for(claiming.wait(), 10)
            stop.set()
            began = time.monotonic()
        took = time.monotonic() - began  # the engine's serve() has returned
        starting.cancel()
    assert took < grace_s + 2.0, f"the engine took {took:.2f} s to shut down"

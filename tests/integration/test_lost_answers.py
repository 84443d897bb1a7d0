"""Writes that commit while their answer is late or lost. A claim: the caller cancelling its
Execute meanwhile, or the answer never arriving; either way the run must be executed, not
left `running` for the sweeper. A generation: its retry must be answered, not refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.errors import Unavailable
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.servicer import RunsServicer
from tests.support.inprocess import Clients, runs_and_engine
from tests.support.workflows import llm_step


@contextlib.asynccontextmanager
async def two_step_run(database_url: str) -> AsyncIterator[tuple[Clients, pb.Run]]:
    """runs and an engine in process, and a pending run of two steps."""
    async with runs_and_engine(database_url) as api:
        steps = [llm_step("one", "x", tokens=3), llm_step("two", "y", tokens=3)]
        workflow = await api.runs.create_workflow("claim-answer", steps)
        yield api, await api.runs.create_run(workflow.id)


async def test_a_caller_gone_during_the_claim_does_not_strand_the_run(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RunsServicer.ClaimRun
    claimed = asyncio.Event()

    async def answers_the_claim_late(
        self: RunsServicer, request: runs_pb2.ClaimRunRequest, context: Any
    ) -> runs_pb2.ClaimRunResponse:
        response = await original(self, request, context)  # committed
        claimed.set()
        await asyncio.sleep(0.5)
        return response

    monkeypatch.setattr(RunsServicer, "ClaimRun", answers_the_claim_late)
    async with two_step_run(database_url) as (api, run):
        assert api.engine is not None
        engine = api.engine

        async def follow() -> None:
            async for _ in engine.execute(run.id):
                pass

        following = asyncio.create_task(follow())
        await asyncio.wait_for(claimed.wait(), 10)
        following.cancel()  # the browser left while the claim's answer was on its way
        with pytest.raises(asyncio.CancelledError):
            await following
        for _ in range(100):
            stored = await api.runs.get_run(run.id)
            if stored.status not in ev.ACTIVE_RUN_STATUSES:
                break
            await asyncio.sleep(0.1)
    assert stored.status == ev.COMPLETED, (stored.status, stored.error)
    assert [s.status for s in stored.steps] == [ev.COMPLETED, ev.COMPLETED]


async def test_a_claim_whose_answer_was_lost_is_won_again_by_its_retry(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RunsServicer.ClaimRun
    calls: list[runs_pb2.ClaimRunRequest] = []
    refusals: list[bool] = []

    async def loses_the_first_answer(
        self: RunsServicer, request: runs_pb2.ClaimRunRequest, context: Any
    ) -> runs_pb2.ClaimRunResponse:
        calls.append(request)
        response = await original(self, request, context)  # committed
        if len(calls) == 1:
            # Another attempt, or this attempt's id from another owner, is still refused.
            for owner, claim_id in ((request.owner, "another"), ("elsewhere", request.claim_id)):
                other = runs_pb2.ClaimRunRequest()
                other.CopyFrom(request)
                other.owner, other.claim_id = owner, claim_id
                refusals.append((await original(self, other, context)).won)
            raise Unavailable("the answer was lost")
        return response

    monkeypatch.setattr(RunsServicer, "ClaimRun", loses_the_first_answer)
    async with two_step_run(database_url) as (api, run):
        assert api.engine is not None
        events: list[pb.RunEvent] = [e async for e in api.engine.execute(run.id)]
        stored = await api.runs.get_run(run.id)
    assert len(calls) == 2 and calls[0].claim_id == calls[1].claim_id != ""
    assert refusals == [False, False]
    assert stored.status == ev.COMPLETED, (stored.status, stored.error)
    types = [e.type for e in events]
    assert types.count(ev.RUN_STARTED) == 1 and types[-1] == ev.RUN_COMPLETED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_generation_whose_answer_was_lost_is_answered_again_by_its_retry(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry found its own steps in place and refused their names as duplicates: the run
    failed, though the generation had committed."""
    original = RunsServicer.GenerateSteps
    calls = 0

    async def loses_the_first_answer(
        self: RunsServicer, request: runs_pb2.GenerateStepsRequest, context: Any
    ) -> runs_pb2.WriteResponse:
        nonlocal calls
        calls += 1
        response = await original(self, request, context)  # committed
        if calls == 1:
            raise Unavailable("the answer was lost")
        return response

    monkeypatch.setattr(RunsServicer, "GenerateSteps", loses_the_first_answer)
    async with two_step_run(database_url) as (api, _):
        assert api.engine is not None
        outline = pb.StepSpec(name="Outline", kind="llm", prompt="p", params_json='{"items": 3}')
        synthesis = pb.StepSpec(
            name="Synthesis",
            kind="synthesis",
            prompt="{{ steps.Outline.output }}",
            generates="implementation_prompt",
            params_json='{"items": 3}',
        )
        workflow = await api.runs.create_workflow("plan", [outline, synthesis])
        run = await api.runs.create_run(workflow.id)
        events = [e async for e in api.engine.execute(run.id)]
        stored = await api.runs.get_run(run.id)
    assert calls == 2
    assert stored.status == ev.COMPLETED, (stored.status, stored.error)
    assert [s.kind for s in stored.steps].count("implementation_prompt") == 3
    types = [e.type for e in events]
    assert types.count(ev.STEPS_GENERATED) == 1 and types[-1] == ev.RUN_COMPLETED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

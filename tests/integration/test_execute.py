"""Engine Execute against the real runs service: order, persistence, failure paths."""

from __future__ import annotations

import json

import pytest

from nyxflow import events as ev
from nyxflow.errors import FailedPrecondition, NotFound
from nyxflow.v1 import common_pb2 as pb
from tests.support.inprocess import Clients
from tests.support.workflows import chain, llm_step


async def collect(api: Clients, run_id: str) -> list[pb.RunEvent]:
    assert api.engine is not None
    return [event async for event in api.engine.execute(run_id)]


async def test_execute_streams_every_event_in_order_and_persists(api: Clients) -> None:
    workflow = await api.runs.create_workflow("three", chain(3, tokens=12))
    run = await api.runs.create_run(workflow.id)

    events = await collect(api, run.id)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    types = [e.type for e in events]
    assert types[0] == ev.RUN_STARTED and types[-1] == ev.RUN_COMPLETED
    assert types.count(ev.STEP_STARTED) == 3 and types.count(ev.STEP_COMPLETED) == 3
    stored = await api.runs.get_run(run.id)
    assert stored.status == ev.COMPLETED and stored.last_seq == events[-1].seq
    assert [s.status for s in stored.steps] == [ev.COMPLETED] * 3
    completed = [json.loads(e.data_json) for e in events if e.type == ev.STEP_COMPLETED]
    assert [c["output"] for c in completed] == [s.output for s in stored.steps]
    deltas = "".join(
        json.loads(e.data_json)["text"]
        for e in events
        if e.type == ev.STEP_DELTA and json.loads(e.data_json)["step_id"] == stored.steps[0].id
    )
    assert deltas == stored.steps[0].output and len(deltas.split()) == 12
    replay = [e async for e in api.runs.watch_run(run.id, 0)]
    assert [(e.seq, e.type, e.data_json) for e in replay] == [
        (e.seq, e.type, e.data_json) for e in events
    ]


async def test_later_step_sees_earlier_output(api: Clients) -> None:
    steps = [llm_step("a", "x", tokens=5), llm_step("b", "about: {{ steps.a.output }}", tokens=5)]
    workflow = await api.runs.create_workflow("refs", steps)
    run = await api.runs.create_run(workflow.id)
    await collect(api, run.id)
    stored = await api.runs.get_run(run.id)
    # local's output is a function of the prompt: b's differs from a prompt without a's output
    assert stored.steps[1].input_tokens == len(f"about: {stored.steps[0].output}".split())


async def test_a_second_execute_of_the_same_run_is_refused(api: Clients) -> None:
    workflow = await api.runs.create_workflow("once", chain(1))
    run = await api.runs.create_run(workflow.id)
    await collect(api, run.id)
    with pytest.raises(FailedPrecondition):
        await collect(api, run.id)
    assert (await api.runs.get_run(run.id)).last_seq == 5  # started, step x3, completed


async def test_step_exception_fails_step_and_run_with_the_message(api: Clients) -> None:
    steps = [llm_step("ok", tokens=3), llm_step("boom", fail="model exploded"), llm_step("after")]
    workflow = await api.runs.create_workflow("failing", steps)
    run = await api.runs.create_run(workflow.id)

    events = await collect(api, run.id)

    assert events[-1].type == ev.RUN_FAILED
    assert ev.STEP_FAILED in [e.type for e in events]
    stored = await api.runs.get_run(run.id)
    assert stored.status == ev.FAILED
    assert "boom" in stored.error and "model exploded" in stored.error
    assert [s.status for s in stored.steps] == [ev.COMPLETED, ev.FAILED, ev.PENDING]
    assert stored.steps[1].error == "model exploded"
    assert stored.finished_at > 0


async def test_bad_step_params_fail_the_step_with_the_field_named(api: Clients) -> None:
    workflow = await api.runs.create_workflow("bad", [llm_step("a", tokens="many")])
    run = await api.runs.create_run(workflow.id)
    await collect(api, run.id)
    stored = await api.runs.get_run(run.id)
    assert stored.status == ev.FAILED
    assert stored.steps[0].error == "params.tokens: must be an integer >= 1"


async def test_execute_of_unknown_run_is_not_found(api: Clients) -> None:
    with pytest.raises(NotFound):
        await collect(api, "00000000-0000-0000-0000-000000000000")


async def test_truncation_is_recorded(api: Clients) -> None:
    spec = llm_step("long", tokens=50)
    spec.max_tokens = 20
    workflow = await api.runs.create_workflow("trunc", [spec])
    run = await api.runs.create_run(workflow.id)
    events = await collect(api, run.id)
    assert ev.STEP_TRUNCATED in [e.type for e in events]
    step = (await api.runs.get_run(run.id)).steps[0]
    assert step.truncated and step.finish_reason == "max_tokens" and step.output_tokens == 20

"""A fan-out runs `concurrency` workers over its items, not a task per item. A task per item
(100,000 for a pasted list fanned out by lines) held the engine's loop for seconds to start
them and again to cancel them: every other run on that engine went without heartbeat, event
or write meanwhile, and with a short lease was swept as an orphan. The runs service and the
engine share this test's loop, so the tasks counted here are the engine's."""

from __future__ import annotations

import asyncio
import json

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from tests.support.inprocess import Clients

ITEMS = 2_000
CONCURRENCY = 8
# The services' own tasks and the workers: far below one per item, whatever the item count.
BOUND = 500


def lines_then_each(count: int) -> list[pb.StepSpec]:
    """A step listing `count` lines, then a fan-out over them, each item a short wait."""
    source = "\n".join(f"record {i}" for i in range(count))
    return [
        pb.StepSpec(
            name="Records", kind="llm", prompt="p", params_json=json.dumps({"script": source})
        ),
        pb.StepSpec(
            name="Each",
            kind="fan_out",
            prompt="Classify: {{ item }}",
            source="Records",
            split="lines",
            concurrency=CONCURRENCY,
            params_json=json.dumps({"tokens": 1, "token_delay_ms": 1}),
        ),
    ]


async def test_a_long_fan_out_runs_a_bounded_number_of_tasks(api: Clients) -> None:
    workflow = await api.runs.create_workflow("long list", lines_then_each(ITEMS))
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    # Counted as each item's progress arrives: the fan-out is running then.
    counted: list[int] = []
    events: list[pb.RunEvent] = []
    async for event in api.engine.execute(run.id):
        events.append(event)
        if event.type == ev.FAN_OUT_PROGRESS:
            counted.append(len(asyncio.all_tasks()))

    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json
    assert len(counted) == ITEMS
    assert max(counted) < BOUND, f"{max(counted)} tasks for {ITEMS} items"
    done = await api.runs.get_run(run.id)
    assert done.steps[1].status == ev.COMPLETED
    assert done.steps[1].output_tokens == ITEMS
    listed = await api.runs.all_step_items(run.id, done.steps[1].id)
    assert [i.index for i in listed] == list(range(ITEMS))
    assert [i.heading for i in listed[:2]] == ["record 0", "record 1"]


async def test_a_long_fan_out_cancelled_midway_ends_cancelled(api: Clients) -> None:
    workflow = await api.runs.create_workflow("long list", lines_then_each(ITEMS))
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    counted: list[int] = []
    async for event in api.engine.execute(run.id):
        if event.type == ev.FAN_OUT_PROGRESS:
            counted.append(len(asyncio.all_tasks()))
            if json.loads(event.data_json)["done"] == 20:
                cancelled = await api.runs.cancel_run(run.id)
                assert cancelled.status == ev.CANCELLED

    assert counted and max(counted) < BOUND, f"{max(counted)} tasks for {ITEMS} items"
    after = await api.runs.get_run(run.id)
    assert after.status == ev.CANCELLED
    assert [s.status for s in after.steps] == [ev.COMPLETED, ev.CANCELLED]
    stored = await api.runs.all_step_items(run.id, after.steps[1].id)
    assert 20 <= len(stored) < ITEMS  # what was done is kept, the rest never started
    events = [e async for e in api.runs.watch_run(run.id)]
    assert events[-1].type == ev.RUN_CANCELLED

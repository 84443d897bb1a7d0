"""A fan-out whose items are big in all (each write well under the 32 MiB message limit): the
whole reads of its run (GetRun, GetWorkflow, the claim's answer) carry item outputs only up to
a budget and flag the rest as left out, ListStepItems serves those, and the engine fetches
them before it joins the step's output. Before, such a run read 36 MB: it could not be shown,
retried or resumed, and a retry's claim committed and then failed, stranding the run."""

from __future__ import annotations

import json

from nyxflow import events as ev
from nyxflow.auth import internal_metadata
from nyxflow.client import RunsClient
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.splitting import split_items
from nyxflow_engine.steps.fan_out import context_hash, input_hash
from nyxflow_runs.store.base import ITEM_OUTPUTS_PER_READ
from tests.support.inprocess import SECRET, Clients
from tests.support.workflows import complete

OWNER = "engine-under-test"
ITEMS = 180
ITEM_TEXT = "x" * 100_000  # 100 KB per item's answer: 18 MB in all, and the joined output again
LIMIT = 32 * 2**20  # gRPC's message limit, as the services set it


def spec(name: str, kind: str = "llm", prompt: str = "p", **fields: object) -> pb.StepSpec:
    params = fields.pop("params", {})
    return pb.StepSpec(
        name=name,
        kind=kind,
        prompt=prompt,
        params_json=json.dumps(params),
        **fields,  # type: ignore[arg-type]
    )


def as_engine(api: Clients, tenant_id: str) -> RunsClient:
    return RunsClient(api.runs_channel, internal_metadata(SECRET, tenant_id))


def topics(count: int) -> str:
    return "\n".join(f"topic {i}" for i in range(count))


def topics_then_each(count: int, answer: str, **fields: object) -> list[pb.StepSpec]:
    """A step listing `count` topics, then a fan-out over its lines answering `answer` each."""
    return [
        spec("Topics", params={"script": topics(count), "tokens": 1}),
        spec(
            "Each",
            "fan_out",
            "{{ item }}",
            source="Topics",
            split="lines",
            params={"script": answer, "tokens": 1},
            **fields,
        ),
    ]


def carried(items: list[pb.StepItem]) -> int:
    """The bytes of item output a read carried."""
    return sum(len(i.output.encode()) for i in items if not i.output_left_out)


def assert_bounded(steps: list[pb.Step], total: int) -> None:
    """A whole read: item outputs up to the budget, the rest flagged and empty, in order."""
    items = [i for s in steps for i in s.items]
    assert len(items) == total
    assert carried(items) <= ITEM_OUTPUTS_PER_READ
    left_out = [i for i in items if i.output_left_out]
    assert left_out, "the read carried every item's output"
    assert all(i.output == "" and i.heading and i.input_hash for i in left_out)
    first = items.index(left_out[0])
    assert all(i.output_left_out for i in items[first:]), "a prefix carried, the rest left out"


async def paused_with_kept(api: Clients, count: int, kept: list[str]) -> pb.Workflow:
    """A workflow whose run paused in its fan-out over `count` topics answering "made now",
    with every item but the last stored as the engine stores them, its output `kept[index]`
    (to tell kept items from items made again)."""
    workflow = await api.runs.create_workflow("kept", topics_then_each(count, "made now"))
    run = await api.runs.create_run(workflow.id)
    engine = as_engine(api, run.tenant_id)
    claim = await engine.claim_run(run.id, OWNER, 30)
    assert claim.won
    source, each = claim.run.steps
    done = runs_pb2.StepChange(status=ev.COMPLETED, output=topics(count))
    await engine.update_step(run.id, claim.token, source.id, done)
    around = context_hash(each.prompt, {"Topics": topics(count)})
    for index, item in enumerate(split_items(topics(count), "lines")[:-1]):
        stored = pb.StepItem(
            index=index,
            heading=item.heading,
            output=kept[index],
            input_hash=input_hash(around, item.text),
            input_tokens=1,
            output_tokens=1,
            served_by="local:kept",
        )
        await engine.put_step_item(run.id, claim.token, each.id, stored)
    await engine.finish_run(run.id, claim.token, ev.PAUSED)
    return workflow


async def items_run(api: Clients, run_id: str) -> list[int]:
    """Execute the run to its end: the indexes of the fan-out items it ran."""
    assert api.engine is not None
    events = [e async for e in api.engine.execute(run_id)]
    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json
    return [json.loads(e.data_json)["index"] for e in events if e.type == ev.FAN_OUT_PROGRESS]


async def test_a_big_fan_out_keeps_its_run_readable_retryable_and_its_items_listed(
    api: Clients,
) -> None:
    workflow = await api.runs.create_workflow(
        "big",
        [
            *topics_then_each(ITEMS, ITEM_TEXT, concurrency=16, max_tokens=100),
            spec("After", params={"tokens": 2}),
        ],
    )
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    events = [e async for e in api.engine.execute(run.id)]
    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json

    found = await api.runs.get_run(run.id)
    each = found.steps[1]
    assert each.output == "\n\n".join([ITEM_TEXT] * ITEMS)
    assert_bounded(list(found.steps), ITEMS)
    assert found.ByteSize() < LIMIT
    shown = await api.runs.get_workflow(workflow.id)
    assert_bounded(list(shown.steps), ITEMS)
    assert [i.output_left_out for i in shown.steps[1].items] == [
        i.output_left_out for i in each.items
    ]
    # ListStepItems has every output, those left out included
    listed = await api.runs.all_step_items(run.id, each.id)
    assert [i.index for i in listed] == list(range(ITEMS))
    assert all(i.output == ITEM_TEXT and not i.output_left_out for i in listed)

    # A retry's claim answers the run as bounded (the PostgreSQL claim builds its own read).
    retried = await api.runs.retry_step(workflow.steps[2].id)
    engine = as_engine(api, retried.tenant_id)
    claim = await engine.claim_run(retried.id, OWNER, 30)
    assert claim.won
    assert_bounded(list(claim.run.steps), ITEMS)
    assert [i.output_left_out for s in claim.run.steps for i in s.items] == [
        i.output_left_out for s in found.steps for i in s.items
    ]
    await complete(engine, claim.run, claim.token)

    # and the engine retries it to the end: the workflow runs again
    again = await api.runs.retry_step(workflow.steps[2].id)
    events = [e async for e in api.engine.execute(again.id)]
    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json
    after = await api.runs.get_run(again.id)
    assert [s.status for s in after.steps] == [ev.COMPLETED] * 3
    assert after.steps[1].output == each.output


async def test_a_resumed_fan_out_joins_the_kept_items_a_claim_left_out(api: Clients) -> None:
    """A run paused with most items done: the resumed run's claim leaves the later ones'
    outputs out, and the engine fetches them, runs only the item missing, and joins all."""
    count = 12
    big = 1_000_000  # 12 MB of kept items: past the budget
    kept = [f"kept {i}: " + "k" * big for i in range(count - 1)]
    workflow = await paused_with_kept(api, count, kept)

    resumed = await api.runs.resume_workflow(workflow.id)
    assert await items_run(api, resumed.id) == [count - 1], "only the missing item runs"

    finished = await api.runs.get_run(resumed.id)
    assert_bounded(list(finished.steps), count - 1 + 1)
    step = finished.steps[1]
    assert step.output == "\n\n".join([*kept, "made now"])
    assert step.input_tokens >= count - 1  # the kept items' usage counts
    assert "local:kept" in step.served_by

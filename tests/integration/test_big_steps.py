"""A run whose steps' own outputs together pass what one message holds: the whole reads (GetRun,
GetWorkflow, the claim's answer) carry them in step order up to a budget and flag the rest as
left out, GetStep serves each whole, and the engine reads them before a later step uses them.
Before, such a run read 40 MB: it could not be shown, retried or resumed."""

from __future__ import annotations

import json

import pytest

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, RunsClient
from nyxflow.errors import InvalidArgument, NotFound
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.store.base import STEP_OUTPUTS_PER_READ
from tests.integration.test_big_fan_out import LIMIT, as_engine
from tests.support.inprocess import ADMIN_KEY, Clients

OWNER = "engine-under-test"
BIG = 9_000_000  # three of these pass the budget: the third is left out


def text(letter: str) -> str:
    return letter * BIG


def spec(name: str, prompt: str = "p", **params: object) -> pb.StepSpec:
    return pb.StepSpec(name=name, kind="llm", prompt=prompt, params_json=json.dumps(params))


async def big_run(api: Clients) -> tuple[RunsClient, pb.Run, int]:
    """A claimed run of four steps: the first three stored with 9 MB outputs (the third with
    two alternatives of 9 MB more), the last still to run, reading the third's output."""
    workflow = await api.runs.create_workflow(
        "big-steps",
        [
            spec("A"),
            spec("B"),
            spec("C"),
            spec("After", "{{ steps.C.output }}", tokens=1, replies={"zzzzzzzz": "C read whole"}),
        ],
    )
    run = await api.runs.create_run(workflow.id)
    engine = as_engine(api, run.tenant_id)
    claim = await engine.claim_run(run.id, OWNER, 30)
    assert claim.won
    for step, letter in zip(claim.run.steps[:3], "xyz", strict=False):
        alternatives = (
            [pb.Alternative(index=i, output=text(letter)[: BIG // 2]) for i in range(2)]
            if letter == "z"
            else []
        )
        change = runs_pb2.StepChange(
            status=ev.COMPLETED, output=text(letter), alternatives=alternatives
        )
        await engine.update_step(run.id, claim.token, step.id, change)
    return engine, claim.run, claim.token


def assert_prefix_carried(steps: list[pb.Step]) -> None:
    carried = [s for s in steps if not s.output_left_out]
    assert [s.name for s in carried] == ["A", "B"]
    assert [len(s.output) for s in carried] == [BIG, BIG]
    assert sum(len(s.output) for s in carried) <= STEP_OUTPUTS_PER_READ
    left_out = [s for s in steps if s.output_left_out]
    assert [s.name for s in left_out] == ["C", "After"]
    assert all(s.output == "" and not s.alternatives for s in left_out)
    assert left_out[0].status == ev.COMPLETED  # what it is, said; only its output is left out


async def test_a_run_of_big_steps_is_read_within_a_message_and_each_step_whole(
    api: Clients,
) -> None:
    engine, run, token = await big_run(api)
    await engine.update_step(
        run.id, token, run.steps[3].id, runs_pb2.StepChange(status=ev.COMPLETED, output="d")
    )
    await engine.finish_run(run.id, token, ev.COMPLETED)

    found = await api.runs.get_run(run.id)
    assert found.ByteSize() < LIMIT
    assert_prefix_carried(list(found.steps))
    shown = await api.runs.get_workflow(found.workflow_id)
    assert_prefix_carried(list(shown.steps))

    whole = await api.runs.get_step(found.steps[2].id)
    assert (whole.output, whole.output_left_out) == (text("z"), False)
    assert [len(a.output) for a in whole.alternatives] == [BIG // 2, BIG // 2]
    await api.runs.fill_left_out_steps(found.steps)
    assert [s.output[:1] for s in found.steps] == ["x", "y", "z", "d"]
    assert not any(s.output_left_out for s in found.steps)


async def test_the_engine_reads_a_left_out_output_before_a_later_step_uses_it(
    api: Clients,
) -> None:
    engine, run, token = await big_run(api)
    await engine.finish_run(run.id, token, ev.FAILED, "stopped before the last step")

    # The resumed run's claim carries the run within a message, C's output left out; the
    # engine reads it whole before After's prompt does.
    resumed = await api.runs.resume_workflow(run.workflow_id)
    assert api.engine is not None
    events = [e async for e in api.engine.execute(resumed.id)]
    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json
    after = await api.runs.get_step(run.steps[3].id)
    assert after.output == "C read whole"
    started = [json.loads(e.data_json)["name"] for e in events if e.type == ev.STEP_STARTED]
    assert started == ["After"], "a resume runs only what is not completed"


async def test_get_step_refuses_bad_unknown_and_other_tenants_ids(api: Clients) -> None:
    workflow = await api.runs.create_workflow("one", [spec("A")])
    step = workflow.steps[0]
    assert (await api.runs.get_step(step.id)).name == "A"
    with pytest.raises(InvalidArgument) as empty:
        await api.runs.get_step("")
    assert empty.value.field == "step_id"
    with pytest.raises(NotFound) as unknown:
        await api.runs.get_step("0" * 36)
    assert unknown.value.field == "step_id"
    admin = AdminClient(api.runs_channel, bearer_metadata(ADMIN_KEY))
    await admin.create_tenant("team-b", "Team B")
    other_tenant = api.as_key((await admin.create_api_key("team-b", "ci")).secret)
    with pytest.raises(NotFound):
        await other_tenant.get_step(step.id)

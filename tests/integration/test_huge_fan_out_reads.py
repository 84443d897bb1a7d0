"""A fan-out of 100,000 items: a whole read (GetRun, GetWorkflow, GetStep, the claim's answer)
lists its first items only, within a count and a byte budget, and says how many it left
unlisted (Step.items_left_out), which ListStepItems serves. Before, every item's heading,
hash and served_by went in: such a run read 37.8 MB, past the 32 MiB message limit, and could
not be shown, retried or resumed; a retry's claim committed, then failed to answer, and the
run sat `running` until swept as an orphan."""

from __future__ import annotations

import json

import httpx
import pytest

from nyxflow import events as ev
from nyxflow.errors import ResourceExhausted
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.store import base
from tests.integration.conftest import CliCall
from tests.integration.test_big_fan_out import (
    OWNER,
    as_engine,
    items_run,
    paused_with_kept,
    spec,
    topics_then_each,
)
from tests.support.inprocess import Clients

COUNT = 100_000
ANSWER = "a" * 150  # each item's answer: 15 MB joined
LIMIT = 32 * 2**20  # gRPC's message limit, as the services set it


def assert_lists_the_first(step: pb.Step, total: int) -> None:
    """A whole read's fan-out: its first items, in order, and the count of the rest."""
    assert [i.index for i in step.items] == list(range(len(step.items)))
    assert step.items_left_out == total - len(step.items) > 0


# 100,000 items: PostgreSQL only (the tests below lower the cap to cover both backends)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_every_whole_read_of_a_100k_item_fan_out_fits_and_counts_what_it_leaves_out(
    api: Clients, gateway: httpx.AsyncClient, nyxflow: CliCall
) -> None:
    workflow = await api.runs.create_workflow(
        "huge",
        [
            *topics_then_each(COUNT, ANSWER, concurrency=64),
            spec("After", params={"tokens": 2}),
        ],
    )
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    last = None
    async for batch in api.engine.execute_batches(run.id):
        last = batch[-1]
    assert last is not None
    assert last.type == ev.RUN_COMPLETED, last.data_json
    each_id = workflow.steps[1].id

    found = await api.runs.get_run(run.id)
    assert found.ByteSize() < LIMIT
    assert_lists_the_first(found.steps[1], COUNT)
    assert_lists_the_first((await api.runs.get_workflow(workflow.id)).steps[1], COUNT)
    assert_lists_the_first(await api.runs.get_step(each_id), COUNT)
    for path in (f"/v1/runs/{run.id}", f"/v1/workflows/{workflow.id}"):
        got = await gateway.get(path)
        assert got.status_code == 200, got.text[:300]
        step = got.json()["steps"][1]
        assert step["items_left_out"] == COUNT - len(step["items"]) > 0
    got = await gateway.get(f"/v1/steps/{each_id}")
    assert got.status_code == 200, got.text[:300]
    assert got.json()["items_left_out"] == COUNT - len(got.json()["items"]) > 0

    # The CLI counts every item, and --json pages in those the read left unlisted.
    shown = await nyxflow("run", "show", run.id)
    assert shown.exit_code == 0, shown.output[-300:]
    assert f"{COUNT} items" in shown.output
    shown = await nyxflow("run", "show", run.id, "--json")
    assert shown.exit_code == 0, shown.output[-300:]
    items = json.loads(shown.output)["steps"][1]["items"]
    assert [i.get("index", 0) for i in items] == list(range(COUNT))
    assert all(i["output"] == ANSWER for i in items)

    # A retry of the last step is claimed, answered and run to its end.
    again = await api.runs.retry_step(workflow.steps[2].id)
    events = [e async for e in api.engine.execute(again.id)]
    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json
    assert not [e for e in events if e.type == ev.FAN_OUT_PROGRESS]


async def test_a_resumed_fan_out_runs_none_of_the_finished_items_its_claim_left_unlisted(
    api: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run paused with all items but the last done; its resumed run's claim lists only the
    first few (a small cap for the test), and the engine pages in the rest rather than run
    them again."""
    monkeypatch.setattr(base, "ITEMS_PER_READ", 4)
    count = 12
    kept = [f"kept {i}" for i in range(count - 1)]
    workflow = await paused_with_kept(api, count, kept)

    resumed = await api.runs.resume_workflow(workflow.id)
    read = await api.runs.get_run(resumed.id)
    assert len(read.steps[1].items) == 4 and read.steps[1].items_left_out == count - 1 - 4
    assert await items_run(api, resumed.id) == [count - 1], "only the missing item runs"
    finished = await api.runs.get_run(resumed.id)
    assert finished.steps[1].output == "\n\n".join([*kept, "made now"])
    assert finished.steps[1].input_tokens >= count - 1  # the kept items' usage counts


async def test_a_retry_of_the_step_after_a_fan_out_past_the_cap_completes(
    api: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "ITEMS_PER_READ", 3)
    count = 10
    workflow = await api.runs.create_workflow(
        "retried", [*topics_then_each(count, "each"), spec("After", params={"tokens": 2})]
    )
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    events = [e async for e in api.engine.execute(run.id)]
    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json
    again = await api.runs.retry_step(workflow.steps[2].id)
    events = [e async for e in api.engine.execute(again.id)]
    assert events[-1].type == ev.RUN_COMPLETED, events[-1].data_json
    assert not [e for e in events if e.type == ev.FAN_OUT_PROGRESS], "no item runs again"
    found = await api.runs.get_run(again.id)
    assert found.steps[1].items_left_out == count - 3
    assert found.steps[1].output == "\n\n".join(["each"] * count)


async def test_a_claim_whose_answer_cannot_be_sent_is_undone(
    api: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is built before the claim commits: one past what a claim's answer carries
    (a tiny room for the test) refuses the claim, and the run stays pending, never `running`
    with no engine told it won."""
    workflow = await api.runs.create_workflow("tight", topics_then_each(3, "each"))
    run = await api.runs.create_run(workflow.id)
    engine = as_engine(api, run.tenant_id)
    monkeypatch.setattr(base, "CLAIM_ROOM", 100)
    with pytest.raises(ResourceExhausted, match="it was not started"):
        await engine.claim_run(run.id, OWNER, 30)
    assert (await api.runs.get_run(run.id, brief=True)).status == ev.PENDING
    monkeypatch.undo()
    assert (await engine.claim_run(run.id, OWNER, 30)).won

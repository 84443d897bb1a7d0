"""ListStepItems: a step's fan-out items page by page, bounded in count and in bytes of output,
through the real gRPC API on both databases; bad input named by field, wrong and foreign ids
NOT_FOUND, an older run's FAILED_PRECONDITION."""

from __future__ import annotations

import pytest

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, RunsClient
from nyxflow.errors import FailedPrecondition, InvalidArgument, NotFound
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from tests.integration.test_runs_invariants import MISSING, claimed
from tests.support.inprocess import ADMIN_KEY, Clients

MB = 1_000_000


async def with_items(runs: Clients, outputs: dict[int, str]) -> tuple[RunsClient, pb.Run, pb.Step]:
    """A claimed run whose first step stored these items (index → output), in one batch."""
    engine, run, token = await claimed(runs)
    step = run.steps[0]
    ops = [
        runs_pb2.WriteOp(
            item=runs_pb2.ItemWrite(
                step_id=step.id,
                item=pb.StepItem(
                    index=index,
                    heading=f"## Item {index}",
                    output=output,
                    truncated=index % 3 == 0,
                    input_tokens=index,
                    output_tokens=2 * index,
                ),
            )
        )
        for index, output in outputs.items()
    ]
    await engine.record(run.id, token, ops)
    return engine, run, step


async def pages(
    client: RunsClient, run_id: str, step_id: str, limit: int = 0
) -> list[tuple[list[int], int | None]]:
    """Every page from index 0 on: the indexes each held and the next_index it gave."""
    found: list[tuple[list[int], int | None]] = []
    next_index: int | None = 0
    while next_index is not None:
        page = await client.list_step_items(run_id, step_id, next_index, limit)
        next_index = page.next_index if page.HasField("next_index") else None
        found.append(([i.index for i in page.items], next_index))
    return found


async def test_items_page_by_index_with_what_was_stored(runs: Clients) -> None:
    stored = [0, 1, 2, 3, 5, 6, 7, 8, 9]  # 4 is still running: items finish out of order
    _, run, step = await with_items(runs, {i: f"output {i}" for i in reversed(stored)})

    assert await pages(runs.runs, run.id, step.id, limit=3) == [
        ([0, 1, 2], 3),
        ([3, 5, 6], 7),
        ([7, 8, 9], None),
    ]
    whole = await runs.runs.list_step_items(run.id, step.id)  # limit 0: the default, 100
    assert not whole.HasField("next_index")
    from_run = (await runs.runs.get_run(run.id)).steps[0].items
    assert list(whole.items) == list(from_run)  # the same items, every field
    assert (whole.items[4].heading, whole.items[4].output) == ("## Item 5", "output 5")
    assert [i.truncated for i in whole.items[:4]] == [True, False, False, True]
    assert (whole.items[8].input_tokens, whole.items[8].output_tokens) == (9, 18)

    later = await runs.runs.list_step_items(run.id, step.id, from_index=4, limit=2)
    assert ([i.index for i in later.items], later.next_index) == ([5, 6], 7)
    beyond = await runs.runs.list_step_items(run.id, step.id, from_index=2**31 - 1)
    assert list(beyond.items) == [] and not beyond.HasField("next_index")
    other = run.steps[1]  # a step with no items yet
    empty = await runs.runs.list_step_items(run.id, other.id)
    assert list(empty.items) == [] and not empty.HasField("next_index")


async def test_a_page_holds_at_most_500_items(runs: Clients) -> None:
    _, run, step = await with_items(runs, dict.fromkeys(range(501), "x"))
    assert [(len(indexes), more) for indexes, more in await pages(runs.runs, run.id, step.id)] == [
        (100, 100),
        (100, 200),
        (100, 300),
        (100, 400),
        (100, 500),
        (1, None),
    ]
    most = await runs.runs.list_step_items(run.id, step.id, limit=500)
    assert (len(most.items), most.next_index) == (500, 500)


async def test_a_page_holds_about_a_megabyte_of_output_counted_in_bytes(runs: Clients) -> None:
    """Two-byte characters: 300 000 of them are 600 kB, so two do not fit in one page (in
    characters they would); an item longer than the bound comes alone, whole."""
    wide = "é" * 300_000
    huge = "ü" * MB  # 2 MB
    _, run, step = await with_items(runs, {0: wide, 1: wide, 2: huge, 3: "a", 4: "b", 5: wide})

    assert await pages(runs.runs, run.id, step.id) == [
        ([0], 1),
        ([1], 2),
        ([2], 3),
        ([3, 4, 5], None),
    ]
    alone = await runs.runs.list_step_items(run.id, step.id, from_index=2)
    assert alone.items[0].output == huge and alone.next_index == 3


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"run_id": ""}, "run_id"),
        ({"step_id": ""}, "step_id"),
        ({"from_index": -1}, "from_index"),
        ({"from_index": -(2**31)}, "from_index"),
        ({"limit": -1}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": 2**31 - 1}, "limit"),
    ],
)
async def test_bad_input_names_its_field(
    runs: Clients, fields: dict[str, object], field: str
) -> None:
    _, run, step = await with_items(runs, {0: "a"})
    request: dict[str, object] = {"run_id": run.id, "step_id": step.id, **fields}
    with pytest.raises(InvalidArgument) as refused:
        await runs.runs.list_step_items(**request)  # type: ignore[arg-type]
    assert refused.value.field == field


async def test_unknown_foreign_and_other_tenants_ids_are_not_found(runs: Clients) -> None:
    _, run, step = await with_items(runs, {0: "secret"})
    _, elsewhere, _ = await with_items(runs, {0: "elsewhere"})

    with pytest.raises(NotFound):
        await runs.runs.list_step_items(MISSING, step.id)
    with pytest.raises(NotFound) as unknown_step:
        await runs.runs.list_step_items(run.id, MISSING)
    assert unknown_step.value.field == "step_id"
    # A real step, but of another workflow: never read through this run.
    with pytest.raises(NotFound) as foreign:
        await runs.runs.list_step_items(run.id, elsewhere.steps[0].id)
    assert foreign.value.field == "step_id"

    admin = AdminClient(runs.runs_channel, bearer_metadata(ADMIN_KEY))
    await admin.create_tenant("team-b", "Team B")
    other_tenant = runs.as_key((await admin.create_api_key("team-b", "ci")).secret)
    with pytest.raises(NotFound) as hidden:
        await other_tenant.list_step_items(run.id, step.id)
    assert "secret" not in str(hidden.value)


async def test_an_older_runs_items_are_refused_once_a_newer_run_holds_the_step(
    runs: Clients,
) -> None:
    """Steps hold the latest run's state: a re-run resets the items, and a client paging the
    older run's must be told so, not given the newer run's items as if they were its own."""
    _, old, step = await with_items(runs, {0: "old 0", 1: "old 1"})
    before = await runs.runs.list_step_items(old.id, step.id)
    assert [i.output for i in before.items] == ["old 0", "old 1"]
    await runs.runs.cancel_run(old.id)

    new = await runs.runs.rerun_workflow(old.workflow_id)
    with pytest.raises(FailedPrecondition) as refused:
        await runs.runs.list_step_items(old.id, step.id, from_index=1)
    assert refused.value.field == "run_id" and new.id in refused.value.message
    assert list((await runs.runs.list_step_items(new.id, step.id)).items) == []
    # GetRun of the older run shows the steps as they are now: it names whose state that is.
    assert (await runs.runs.get_run(old.id)).superseded_by == new.id
    assert (await runs.runs.get_run(new.id)).superseded_by == ""
    # A step not in the older run's workflow is still NOT_FOUND, whatever run is newer.
    with pytest.raises(NotFound):
        await runs.runs.list_step_items(old.id, MISSING)

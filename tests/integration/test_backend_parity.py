"""The same engine writes end alike on both backends: SQLite applies a batch statement by
statement (store/record.py), PostgreSQL in one statement (store/hot_path.py)."""

from __future__ import annotations

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from tests.integration.test_runs_invariants import claimed
from tests.support.inprocess import Clients


def item_op(step_id: str, index: int, input_hash: str = "") -> runs_pb2.WriteOp:
    item = pb.StepItem(index=index, heading=f"h{index}", output=f"o{index}", input_hash=input_hash)
    return runs_pb2.WriteOp(item=runs_pb2.ItemWrite(step_id=step_id, item=item))


def end_op(step_id: str, count: int | None = None, output: str = "joined") -> runs_pb2.WriteOp:
    change = runs_pb2.StepChange(status=ev.COMPLETED, output=output, item_count=count)
    return runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step_id, change=change))


async def test_items_past_the_count_a_batch_ends_with_are_dropped(runs: Clients) -> None:
    """Written before the end in the same batch, item 3 (and item 2, redone from a new input)
    stayed on PostgreSQL: the statement's prune saw the rows as they were before its upsert."""
    engine, run, token = await claimed(runs)
    step_id = run.steps[0].id
    await engine.record(run.id, token, [item_op(step_id, 2, "old")])
    ops = [item_op(step_id, 0, "a"), item_op(step_id, 1, "b"), item_op(step_id, 2, "new")]
    await engine.record(run.id, token, [*ops, item_op(step_id, 3, "c"), end_op(step_id, 2)])

    stored = await runs.runs.get_run(run.id)
    assert [(i.index, i.input_hash) for i in stored.steps[0].items] == [(0, "a"), (1, "b")]


async def test_a_batch_that_ends_the_run_answers_no_pause_pending(runs: Clients) -> None:
    """Pause asked, then the engine's last batch ends the run: SQLite answered the pause as
    still pending, PostgreSQL as cleared (it is: the run is over)."""
    engine, run, token = await claimed(runs, steps=1)
    await runs.runs.pause_run(run.id)

    answer = await engine.record(
        run.id, token, [end_op(run.steps[0].id, output="x")], finish_status=ev.COMPLETED
    )

    assert answer.pause_requested is False
    assert (await runs.runs.get_run(run.id)).status == ev.COMPLETED

"""A RecordRequest's ops validated before they reach SQL: a value a column cannot hold is
refused for its own batch, naming the field, instead of failing a group commit."""

from __future__ import annotations

import pytest

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.store.record import Batch


def step_op(**change: object) -> runs_pb2.WriteOp:
    return runs_pb2.WriteOp(
        step=runs_pb2.StepWrite(step_id="s", change=runs_pb2.StepChange(**change))  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "done"}, "ops[0].step.change.status"),
        ({"status": ev.COMPLETED, "finish_reason": "x" * 41}, "ops[0].step.change.finish_reason"),
        ({"status": ev.COMPLETED, "served_by": "x" * 401}, "ops[0].step.change.served_by"),
        (
            {"status": ev.COMPLETED, "alternatives": [pb.Alternative(served_by="x" * 401)]},
            "ops[0].step.change.served_by",
        ),
        ({"status": ev.COMPLETED, "input_tokens": 2**31}, "ops[0].step.change.input_tokens"),
        ({"status": ev.COMPLETED, "output_tokens": -1}, "ops[0].step.change.output_tokens"),
        (
            {"status": ev.COMPLETED, "alternatives": [pb.Alternative(output_tokens=2**40)]},
            "ops[0].step.change.output_tokens",
        ),
    ],
)
def test_a_step_change_a_column_cannot_hold_is_refused(
    change: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        Batch.of([step_op(**change)])
    assert refused.value.field == field


def test_the_widest_values_pass() -> None:
    batch = Batch.of(
        [
            step_op(
                status=ev.COMPLETED,
                finish_reason="x" * 40,
                served_by="y" * 400,
                input_tokens=2**31 - 1,
                output_tokens=2**31 - 1,
            )
        ]
    )
    assert batch.ops[0].step.change.served_by == "y" * 400
    assert batch.ops[0].step.change.input_tokens == 2**31 - 1


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"index": -1}, "ops[0].item.item.index"),
        ({"index": 0, "input_tokens": 2**31}, "ops[0].item.item.input_tokens"),
        ({"index": 0, "output_tokens": -1}, "ops[0].item.item.output_tokens"),
    ],
)
def test_an_item_a_column_cannot_hold_is_refused(item: dict[str, int], field: str) -> None:
    op = runs_pb2.WriteOp(item=runs_pb2.ItemWrite(step_id="s", item=pb.StepItem(**item)))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as refused:
        Batch.of([op])
    assert refused.value.field == field

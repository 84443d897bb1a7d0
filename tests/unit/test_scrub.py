"""NUL from a model or a file never reaches the database: it would fail the write and the run."""

from __future__ import annotations

from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.writer import scrub


def test_nul_is_replaced_in_every_string_of_a_write() -> None:
    op = runs_pb2.WriteOp(
        step=runs_pb2.StepWrite(
            step_id="s1",
            change=runs_pb2.StepChange(output="a\x00b", error="e\x00"),
        )
    )
    spec = pb.StepSpec(name="n", reviews=["x\x00y", "ok"])

    scrub(op)
    scrub(spec)

    assert op.step.change.output == "a\ufffdb" and op.step.change.error == "e\ufffd"
    assert op.step.step_id == "s1"
    assert list(spec.reviews) == ["x\ufffdy", "ok"]

"""A step as the workflow list carries it, over HTTP: what the list leaves out reads as left
out (null), never as an empty value the step does not have."""

from __future__ import annotations

from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway.convert import step


def test_a_listed_step_has_null_params_and_a_whole_one_its_own() -> None:
    assert step(pb.Step(name="a", params_json=""))["params"] is None
    assert step(pb.Step(name="a", params_json="{}"))["params"] == {}
    assert step(pb.Step(name="a", params_json='{"items": 3}'))["params"] == {"items": 3}

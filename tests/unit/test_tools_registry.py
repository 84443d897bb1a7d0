"""The tools a workflow may name: runs checks `tool:` at creation against nyxflow.constants,
and the engine's registry must run exactly those."""

from __future__ import annotations

import pytest

from nyxflow import constants as kinds
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.registry import tools
from nyxflow_runs import validation as valid


def test_the_engine_runs_exactly_the_tools_runs_accepts() -> None:
    assert set(tools()) == set(kinds.TOOLS)


@pytest.mark.parametrize("tool", ["no_such_tool", "Echo", " echo"])
def test_an_unknown_tool_is_refused_at_creation_naming_the_known(tool: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        valid.step_drafts(
            [pb.StepSpec(name="a", kind="llm"), pb.StepSpec(name="T", kind="tool", tool=tool)],
            set(),
        )
    assert refused.value.field == "steps[1].tool"
    assert "scan_repository" in str(refused.value)


@pytest.mark.parametrize("tool", kinds.TOOLS)
def test_every_known_tool_is_accepted(tool: str) -> None:
    [draft] = valid.step_drafts([pb.StepSpec(name="T", kind="tool", tool=tool)], set())
    assert draft.config["tool"] == tool

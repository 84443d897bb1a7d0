"""`run follow --json` prints step_completed with its output even when the engine left a long
one out of the event (`output_left_out`): read from the step, as a short one's comes."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import pytest

from nyxflow import events as ev
from nyxflow.cli import follow
from nyxflow.v1 import common_pb2 as pb

LONG = "長い" * 1000


async def _stream(events: list[pb.RunEvent]) -> AsyncGenerator[pb.RunEvent, None]:
    for event in events:
        yield event


def _event(seq: int, etype: str, **data: object) -> pb.RunEvent:
    return pb.RunEvent(seq=seq, type=etype, data_json=json.dumps(data))


async def test_a_left_out_output_is_read_from_its_step(capsys: pytest.CaptureFixture[str]) -> None:
    read: list[str] = []

    async def read_step(step_id: str) -> pb.Step:
        read.append(step_id)
        return pb.Step(id=step_id, output=LONG)

    printer = follow.Printer(tokens=False, as_json=True, read_step=read_step)
    events = [
        _event(1, ev.STEP_COMPLETED, step_id="s1", name="Long", output_left_out=True),
        _event(2, ev.STEP_COMPLETED, step_id="s2", name="Short", output="short"),
        _event(3, ev.RUN_COMPLETED, status=ev.COMPLETED),
    ]
    await printer.relay(_stream(events))

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("output") for line in lines] == [LONG, "short", None]
    assert "output_left_out" not in lines[0]
    assert read == ["s1"]  # a step whose event carried its output is not read

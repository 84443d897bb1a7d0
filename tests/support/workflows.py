"""Workflow specs used across tests."""

from __future__ import annotations

import json
from typing import Any

from nyxflow import events as ev
from nyxflow.client import RunsClient
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2


def llm_step(name: str, prompt: str = "say something", **params: Any) -> pb.StepSpec:
    return pb.StepSpec(name=name, kind="llm", prompt=prompt, params_json=json.dumps(params))


def chain(count: int, **params: Any) -> list[pb.StepSpec]:
    """`count` llm steps, each prompted with the previous output."""
    steps = [llm_step("s0", "begin", **params)]
    steps += [
        llm_step(f"s{i}", f"continue {{{{ steps.s{i - 1}.output }}}}", **params)
        for i in range(1, count)
    ]
    return steps


async def complete(engine: RunsClient, run: pb.Run, token: int) -> list[pb.RunEvent]:
    """End a claimed run `completed` as an engine does: each step's result first, since runs
    refuses to complete a run with a step that is not. Answers the run's end's events."""
    for step in run.steps:
        if step.status != ev.COMPLETED:
            change = runs_pb2.StepChange(status=ev.COMPLETED, output=f"{step.name} done")
            await engine.update_step(run.id, token, step.id, change)
    return list((await engine.finish_run(run.id, token, ev.COMPLETED)).events)

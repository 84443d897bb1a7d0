"""A run whose steps' own outputs are big in all, over HTTP: two fan-outs of 18 items of 1 MB
each (a fan-out's output is its items joined: 18 MB each), past the 20 MiB of them that a whole
read of the run carries. The second fan-out and the step after it (two alternatives) come with
`output: null` and `output_left_out: true`; GET /v1/steps/{id} has them whole."""

from __future__ import annotations

from typing import Any

import httpx

from nyxflow import events as ev
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events

LINES = 18
ITEM_TEXT = "x" * 1_000_000
TOPICS = "\n".join(f"topic {i}" for i in range(LINES))  # a line per fan-out item
JOINED = "\n\n".join([ITEM_TEXT] * LINES)  # each fan-out's own output
NAME = "Big steps"


def _fan_out(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "fan_out",
        "prompt": "{{ item }}",
        "source": "Topics",
        "split": "lines",
        "concurrency": 8,
        "params": {"script": ITEM_TEXT, "tokens": 1},
    }


STEPS = [
    {"name": "Topics", "kind": "llm", "params": {"script": TOPICS, "tokens": 1}},
    _fan_out("A"),
    _fan_out("B"),
    {"name": "Last", "kind": "llm", "alternatives": 2, "params": {"tokens": 6}},
]


async def big_steps(http: httpx.AsyncClient, stack: ProcessStack) -> dict[str, Any]:
    return await create_workflow(http, stack, NAME, STEPS)


async def big_steps_run(http: httpx.AsyncClient, stack: ProcessStack) -> dict[str, Any]:
    """The workflow, run to its end: the run as GET /v1/runs/{id} gives it."""
    workflow = await big_steps(http, stack)
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)  # starts it, to its end
    run = await get_run(http, stack, run_id)
    assert run["status"] == ev.COMPLETED, run["error"]
    return run


def left_out(steps: list[dict[str, Any]]) -> None:
    """The read carried the first two steps' outputs and left the last two's out."""
    assert [s["output"] is None for s in steps] == [False, False, True, True]
    assert [s["output_left_out"] for s in steps] == [False, False, True, True]
    assert steps[1]["output"] == JOINED
    assert steps[3]["alternatives"] == []


def whole(steps: list[dict[str, Any]]) -> None:
    """Every step's output is there whole: the fan-outs' joined items, the last step's chosen
    alternative and both alternatives."""
    assert [s["output"] for s in steps[1:3]] == [JOINED, JOINED]
    last = steps[3]
    assert len(last["alternatives"]) == 2
    assert last["output"] and last["output"] == last["alternatives"][0]["output"]
    assert last["alternatives"][0]["output"] != last["alternatives"][1]["output"]
    assert not any(s.get("output_left_out") for s in steps)

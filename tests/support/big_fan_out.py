"""A fan-out whose items are big in all, over HTTP: 9 MB of item output, past the 8 MiB of it
that a whole read of its run carries (the rest come with `output: null`, left out)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.gateway_api import create_workflow
from tests.support.processes import ProcessStack

ITEMS = 90
ITEM_TEXT = "x" * 100_000
NAME = "Big items"


def lines_then_each(
    name: str, lines: list[str], answer: str, **fan_out: Any
) -> list[dict[str, Any]]:
    """Step `name` answering `lines`, then a fan-out `Each{name}` answering `answer` to each."""
    return [
        {"name": name, "kind": "llm", "params": {"script": "\n".join(lines), "tokens": 1}},
        {
            "name": f"Each{name}",
            "kind": "fan_out",
            "prompt": "{{ item }}",
            "source": name,
            "split": "lines",
            "params": {"script": answer, "tokens": 1},
            **fan_out,
        },
    ]


async def big_fan_out(http: httpx.AsyncClient, stack: ProcessStack) -> dict[str, Any]:
    topics = [f"topic {i}" for i in range(ITEMS)]
    return await create_workflow(http, stack, NAME, lines_then_each("Topics", topics, ITEM_TEXT))


def left_out(run: dict[str, Any]) -> list[int]:
    """The indexes of the fan-out's items whose output the run's read left out."""
    items = run["steps"][1]["items"]
    assert len(items) == ITEMS
    found = [i["index"] for i in items if i["output"] is None]
    assert found, "the run's read carried every item's output"
    return found

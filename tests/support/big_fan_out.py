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


async def big_fan_out(http: httpx.AsyncClient, stack: ProcessStack) -> dict[str, Any]:
    lines = "\n".join(f"topic {i}" for i in range(ITEMS))
    return await create_workflow(
        http,
        stack,
        NAME,
        [
            {"name": "Topics", "kind": "llm", "params": {"script": lines, "tokens": 1}},
            {
                "name": "Each",
                "kind": "fan_out",
                "prompt": "{{ item }}",
                "source": "Topics",
                "split": "lines",
                "params": {"script": ITEM_TEXT, "tokens": 1},
            },
        ],
    )


def left_out(run: dict[str, Any]) -> list[int]:
    """The indexes of the fan-out's items whose output the run's read left out."""
    items = run["steps"][1]["items"]
    assert len(items) == ITEMS
    found = [i["index"] for i in items if i["output"] is None]
    assert found, "the run's read carried every item's output"
    return found

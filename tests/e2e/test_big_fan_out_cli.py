"""`nyxflow run show --json` and `workflow show --json` of a fan-out whose items are big in
all: the whole read leaves outputs out past its budget, and the CLI fills them in from the
items' pages, so that every item comes with its output as before."""

from __future__ import annotations

import json

import httpx

from tests.e2e.test_cli import cli
from tests.support.big_fan_out import ITEM_TEXT, ITEMS, big_fan_out, left_out
from tests.support.gateway_api import get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events


async def test_show_as_json_gives_every_item_output_a_read_left_out(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await big_fan_out(http, stack)
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)  # starts it, to its end
    left_out(await get_run(http, stack, run_id))

    for args in (["run", "show", run_id], ["workflow", "show", workflow["id"]]):
        shown = cli(stack, *args, "--json")
        assert shown.returncode == 0, shown.stderr
        items = json.loads(shown.stdout)["steps"][1]["items"]
        assert [i.get("index", 0) for i in items] == list(range(ITEMS))
        assert all(i["output"] == ITEM_TEXT for i in items), args
        assert not any(i.get("output_left_out") for i in items), args

"""The page showing a fan-out whose items are big in all: the run as read leaves the outputs
past its budget out (null), and the page fetches them through the items API, so that every
item shows its text, as it does after following the run live."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Page, expect

from tests.browser.test_page import open_workflow
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events

ITEMS = 90
ITEM_TEXT = "x" * 100_000  # 9 MB of item output in all: past the 8 MiB a whole read carries
ITEMS_URL = re.compile(r"/v1/runs/[^/]+/steps/[^/]+/items\?")

SHOWN = """(id) => [...document.querySelectorAll(`#step-${id} .item-output`)]
  .map((e) => e.textContent.length)"""


async def test_a_finished_fan_out_shows_the_item_outputs_its_run_read_left_out(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    lines = "\n".join(f"topic {i}" for i in range(ITEMS))
    workflow = await create_workflow(
        http,
        stack,
        "Big items",
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
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)  # starts it, to its end
    run = await get_run(http, stack, run_id)
    assert run["status"] == "completed", run["error"]
    each = run["steps"][1]
    left_out = [i["index"] for i in each["items"] if i["output"] is None]
    assert left_out, "the run's read carried every item's output"
    assert len(each["items"]) == ITEMS

    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if ITEMS_URL.search(r.url) else None)
    await open_workflow(page, workflow["id"], "Big items")
    await expect(page.locator(".detail")).to_have_attribute("data-run-status", "completed")
    items = page.locator(f"#step-{each['id']} .item")
    await expect(items).to_have_count(ITEMS)
    await expect(page.locator(f"#step-{each['id']} .item-output p.muted")).to_have_count(0)
    assert await page.evaluate(SHOWN, each["id"]) == [len(ITEM_TEXT)] * ITEMS
    assert fetched and f"from_index={left_out[0]}&" in fetched[0], fetched

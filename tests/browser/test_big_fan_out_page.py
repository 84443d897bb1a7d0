"""The page showing a fan-out whose items are big in all: the run as read leaves the outputs
past its budget out (null), and the page fetches them through the items API, so that every
item shows its text, as it does after following the run live."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from typing import Any

import httpx
from playwright.async_api import Page, Response, Route, expect

from nyxflow import events as ev
from tests.browser.test_page import EVENTS_URL, open_workflow, shown_run_id
from tests.support.big_fan_out import (
    ITEM_TEXT,
    ITEMS,
    NAME,
    big_fan_out,
    left_out,
    lines_then_each,
)
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.sse_client import Frame, frames, read_events

ITEMS_URL = re.compile(r"/v1/runs/[^/]+/steps/[^/]+/items\?")

SHOWN = """(id) => [...document.querySelectorAll(`#step-${id} .item-output`)]
  .map((e) => e.textContent.length)"""


async def shows_every_item(page: Page, step_id: str) -> None:
    await expect(page.locator(".detail")).to_have_attribute("data-run-status", "completed")
    await expect(page.locator(f"#step-{step_id} .item")).to_have_count(ITEMS)
    await expect(page.locator(f"#step-{step_id} .item-output p.muted")).to_have_count(0)
    assert await page.evaluate(SHOWN, step_id) == [len(ITEM_TEXT)] * ITEMS


async def test_a_finished_fan_out_shows_the_item_outputs_its_run_read_left_out(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await big_fan_out(http, stack)
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)  # starts it, to its end
    run = await get_run(http, stack, run_id)
    assert run["status"] == "completed", run["error"]
    missing = left_out(run)

    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if ITEMS_URL.search(r.url) else None)
    await open_workflow(page, workflow["id"], NAME)
    await shows_every_item(page, run["steps"][1]["id"])
    assert fetched and f"from_index={missing[0]}&" in fetched[0], fetched


async def test_a_followed_big_fan_out_fetches_each_item_once(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Followed live, the items come as they finish; the run's end reads the whole run, which
    leaves outputs out that the page has already: they are kept, not fetched again."""
    workflow = await big_fan_out(http, stack)
    fetched: Counter[int] = Counter()  # item index → times its output was fetched
    reads: list[asyncio.Future[None]] = []

    async def note(response: Response) -> None:
        if ITEMS_URL.search(response.url):
            fetched.update(i["index"] for i in (await response.json())["items"])

    page.on("response", lambda response: reads.append(asyncio.ensure_future(note(response))))
    await open_workflow(page, workflow["id"], NAME)
    await page.get_by_role("button", name="Start", exact=True).click()
    await expect(page.locator(".detail")).to_have_attribute(
        "data-run-status", "completed", timeout=30_000
    )
    run = await get_run(http, stack, await shown_run_id(page))
    left_out(run)
    await shows_every_item(page, run["steps"][1]["id"])
    await asyncio.gather(*reads)
    assert sorted(fetched) == list(range(ITEMS))
    assert max(fetched.values()) == 1, "an item's output was fetched twice"


ANNOUNCED = 60_000
SLOW_FAN_OUT: list[dict[str, Any]] = [
    {"name": "Outline", "params": {"items": 3, "tokens": 3}},
    {
        "name": "Detail",
        "kind": "fan_out",
        "source": "Outline",
        "split": "headings",
        "concurrency": 1,
        "prompt": "Detail: {{ item }}",
        "params": {"tokens": 3, "token_delay_ms": 1000},
    },
]


async def test_many_announced_items_are_taken_in_time_linear_in_their_count(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Each `fan_out_progress` scanned, copied and sorted every item announced before it: a
    fan-out of n items cost n² over its run (60,000 items: about a minute of the page's time).
    The stream here is the run's real start, then its first item's frame repeated for 60,000
    items; the limit only catches that regression (linear, the page shows them in seconds)."""
    workflow = await create_workflow(http, stack, "Announced", SLOW_FAN_OUT)
    start: list[Frame] = []  # the real stream's frames, to its first item's
    fulfilled: list[float] = []

    async def until_first_item(url: str) -> None:
        async with http.stream("GET", url, headers=stack.headers) as response:
            async for frame in frames(response):
                if frame.event:
                    start.append(frame)
                if frame.event == ev.FAN_OUT_PROGRESS:
                    return

    async def handle(route: Route) -> None:
        if route.request.resource_type != "eventsource" or start:
            await route.abort()
            return
        await until_first_item(route.request.url)
        *before, first = start
        body = "".join(f"id: {f.id}\nevent: {f.event}\ndata: {f.data}\n\n" for f in before)
        for i in range(ANNOUNCED):
            seq, data = first.seq + i, first.json | {"index": i, "done": i + 1}
            data |= {"seq": seq, "total": ANNOUNCED}
            body += f"id: {seq}\nevent: {first.event}\ndata: {json.dumps(data)}\n\n"
        fulfilled.append(time.monotonic())
        await route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body="retry: 600000\n\n" + body,
        )

    await page.route(EVENTS_URL, handle)
    await open_workflow(page, workflow["id"], "Announced")
    await page.get_by_role("button", name="Start", exact=True).click()
    await expect(page.locator(".fanout-count")).to_have_text(
        f"{ANNOUNCED}/{ANNOUNCED}", timeout=120_000
    )
    took_s = time.monotonic() - fulfilled[0]
    assert took_s < 30, f"the page took {took_s:.0f} s to take {ANNOUNCED} announced items"


UNLISTED = 40  # items past the 10,000 a whole read lists
MANY = 10_000 + UNLISTED


async def test_a_fan_out_past_the_items_a_read_lists_shows_every_item(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """A whole read lists a fan-out's first 10,000 items and counts the rest: the page fetches
    those too, so the last items show with their outputs rather than going missing, and a
    second fan-out's, none of which the read could list, show as well."""
    topics = [f"topic {i}" for i in range(MANY)]
    steps = [
        *lines_then_each("Topics", topics, "done", concurrency=16),
        *lines_then_each("Few", ["a", "b", "c"], "few"),
    ]
    workflow = await create_workflow(http, stack, "Many items", steps)
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)  # starts it, to its end
    run = await get_run(http, stack, run_id)
    assert run["status"] == "completed", run["error"]
    fan, few = run["steps"][1], run["steps"][3]
    assert (len(fan["items"]), fan["items_left_out"]) == (MANY - UNLISTED, UNLISTED)
    assert (len(few["items"]), few["items_left_out"]) == (0, 3)

    await open_workflow(page, workflow["id"], "Many items")
    items = page.locator(f"#step-{fan['id']} .item")
    await expect(items).to_have_count(MANY, timeout=60_000)
    await expect(page.locator(f"#step-{fan['id']} .item-output p.muted")).to_have_count(0)
    last = items.last
    await expect(last).to_have_attribute("data-index", str(MANY - 1))
    await expect(last.locator(".item-output")).to_have_text("done")
    await expect(page.locator(f"#step-{few['id']} .item-output")).to_have_text(["few"] * 3)

"""The page showing a run whose steps' own outputs are 36 MB in all: the run as read leaves the
outputs of the steps past its budget out (null), and the page fetches each such step whole from
GET /v1/steps/{id} once for what it holds, so that its output and alternatives show, as they do
after following the run live; a fan-out's own output is its items, which come page by page."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import httpx
from playwright.async_api import Locator, Page, Request, Route, expect

from tests.browser.test_page import open_workflow, shown_run_id, words
from tests.support.big_steps import ITEM_TEXT, LINES, NAME, big_steps, big_steps_run, left_out
from tests.support.gateway_api import get_run
from tests.support.processes import ProcessStack

STEP_URL = re.compile(r"/v1/steps/([^/?]+)$")

SHOWN = """(id) => [...document.querySelectorAll(`#step-${id} .item-output`)]
  .map((e) => e.textContent.length)"""


def count_step_fetches(page: Page) -> Counter[str]:
    """Step id → how many times the page fetched that step whole."""
    fetched: Counter[str] = Counter()

    def note(request: Request) -> None:
        if request.method == "GET" and (found := STEP_URL.search(request.url)):
            fetched[found.group(1)] += 1

    page.on("request", note)
    return fetched


async def shows_every_item(page: Page, step_id: str) -> None:
    await expect(page.locator(f"#step-{step_id} .item")).to_have_count(LINES)
    await expect(page.locator(f"#step-{step_id} .item-output p.muted")).to_have_count(0)
    assert await page.evaluate(SHOWN, step_id) == [len(ITEM_TEXT)] * LINES


async def shows_whole(page: Page, steps: list[dict[str, Any]], alternative: int = 0) -> Locator:
    """The last step's output and alternatives, and both fan-outs' items, are all shown."""
    await expect(page.locator(".detail")).to_have_attribute("data-run-status", "completed")
    last = steps[3]
    assert len(last["alternatives"]) == 2
    shown = page.locator(f"#step-{last['id']}")
    await page.locator(f".pill[data-step-id='{last['id']}']").click()  # opened: its tabs show
    await expect(shown.locator(".output")).to_have_text(
        words(last["alternatives"][alternative]["output"])
    )
    tabs = shown.get_by_role("tab")
    await expect(tabs).to_have_count(2)
    await expect(tabs.nth(alternative)).to_contain_text("in use")
    await expect(shown.locator(".alt-output")).to_have_text(
        words(last["alternatives"][alternative]["output"])
    )
    for fan_out in steps[1:3]:
        await shows_every_item(page, fan_out["id"])
    return shown


async def whole_steps(http: httpx.AsyncClient, stack: ProcessStack, run_id: str) -> list[Any]:
    """The run's steps, each read whole from its own route."""
    steps = []
    for step in (await get_run(http, stack, run_id))["steps"]:
        response = await http.get(f"/v1/steps/{step['id']}", headers=stack.headers)
        assert response.status_code == 200, response.text
        steps.append(response.json())
    return steps


async def test_a_finished_run_shows_the_steps_its_read_left_out(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    run = await big_steps_run(http, stack)
    left_out(run["steps"])
    steps = await whole_steps(http, stack, run["id"])
    last_id = steps[3]["id"]

    fetched = count_step_fetches(page)
    failed: list[str] = []

    async def fail_once(route: Route) -> None:
        """The first fetch of a step fails (a gateway restarting, say): it is tried again."""
        if failed:
            await route.continue_()
        else:
            failed.append(route.request.url)
            await route.fulfill(status=503, json={"error": {"code": "unavailable"}})

    await page.route(STEP_URL, fail_once)
    await open_workflow(page, run["workflow_id"], NAME)
    shown = page.locator(f"#step-{last_id}")
    await expect(shown.locator(".output")).to_have_text("Done; loading the output…")
    await shows_whole(page, steps)
    # Fetched once, and once more after that failed; a fan-out's own output (its items,
    # shown as such) not at all.
    assert failed and fetched == {last_id: 2}, fetched

    # Another alternative chosen: the run read again still leaves the step out, and its new
    # output is fetched whole once more; then the page is read again without fetching it.
    await shown.get_by_role("tab").nth(1).click()
    await shown.get_by_role("button", name="Use this one").click()
    await expect(shown.get_by_role("tab").nth(1)).to_contain_text("in use")
    after = await whole_steps(http, stack, await shown_run_id(page))
    assert after[3]["selected_index"] == 1
    await shows_whole(page, after, alternative=1)
    assert fetched == {last_id: 3}, fetched


async def test_a_followed_run_fetches_a_left_out_step_once(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Followed live, the last step's output comes with its event, its alternatives with the
    run read again, which leaves them out: fetched once, and kept through the run's end's read."""
    workflow = await big_steps(http, stack)
    fetched = count_step_fetches(page)
    await open_workflow(page, workflow["id"], NAME)
    await page.get_by_role("button", name="Start", exact=True).click()
    await expect(page.locator(".detail")).to_have_attribute(
        "data-run-status", "completed", timeout=60_000
    )
    run_id = await shown_run_id(page)
    left_out((await get_run(http, stack, run_id))["steps"])
    steps = await whole_steps(http, stack, run_id)
    await shows_whole(page, steps)
    await asyncio.sleep(1)  # a read the run's end made, and what it would fetch
    assert fetched == {steps[3]["id"]: 1}, fetched

"""The page following a run whose answer is longer than step_completed carries: the engine
leaves it out of the event (`output_left_out`), and the page reads the step whole from
GET /v1/steps/{id} at once, rather than keeping whatever of the stream it had shown."""

from __future__ import annotations

import httpx
from playwright.async_api import Page, expect

from tests.browser.test_big_steps_page import count_step_fetches
from tests.browser.test_page import open_workflow, shown_run_id, words
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, get_run
from tests.support.processes import ProcessStack

# The longest output step_completed carries, in characters (execution.EVENT_OUTPUT_CHARS).
EVENT_OUTPUT_CHARS = 1 << 20
LINE = "日本語の長い回答です、絵文字も 😀 含みます。" * 8
LONG = "\n\n".join(f"{i} {LINE}" for i in range(EVENT_OUTPUT_CHARS // len(LINE) + 10))
NAME = "Long answer"
STEPS = [
    {"name": "Long", "kind": "llm", "params": {"script": LONG, "tokens": 16}},
    # Still running while the page reads the first step: the run's end (whose read of the
    # run would bring the output too) comes seconds later.
    {"name": "Slow", "kind": "llm", "params": {"tokens": 4, "token_delay_ms": 1500}},
]


async def test_a_followed_long_output_is_read_whole_from_its_step(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    assert len(LONG) > EVENT_OUTPUT_CHARS
    workflow = await create_workflow(http, stack, NAME, STEPS)
    fetched = count_step_fetches(page)
    await open_workflow(page, workflow["id"], NAME)
    await page.get_by_role("button", name="Start", exact=True).click()

    long_id = next(s["id"] for s in workflow["steps"] if s["name"] == "Long")
    long = page.locator(f"#step-{long_id}")
    await expect(long).to_have_attribute("data-status", "completed", timeout=60_000)

    async def reads() -> int:
        return fetched[long_id]

    await eventually(reads, lambda n: n > 0, timeout_s=30, what="the long step read whole")
    await expect(long.locator(".output")).to_have_text(words(LONG))

    await expect(page.locator(".detail")).to_have_attribute(
        "data-run-status", "completed", timeout=60_000
    )
    run = await get_run(http, stack, await shown_run_id(page))
    assert run["steps"][0]["output"] == LONG
    assert fetched == {long_id: 1}, fetched

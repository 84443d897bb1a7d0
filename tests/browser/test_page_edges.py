"""The page when things change elsewhere (another tab, the CLI): a workflow deleted, runs ending
and workflows made while the list is shown, a run started while the keyboard is on a step's
button. Any console error or uncaught page error fails the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Locator, Page, Request, expect

from tests.support.gateway_api import create_workflow, get_run, start_run, steps
from tests.support.processes import ProcessStack

LIST_PATH = "/v1/workflows"


@pytest.fixture
async def strict_page(page: Page) -> AsyncIterator[Page]:
    """The signed-in page of conftest on a short viewport (the list scrolls). Console errors
    fail the test as page errors do, but for the browser's own line on an HTTP error status (a
    404 the page expects)."""
    await page.set_viewport_size({"width": 1280, "height": 420})
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(f"console.error: {m.text} @ {m.location}")
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield page
    assert not problems, f"errors on the page: {problems}"


async def open_workflow(page: Page, workflow_id: str, name: str) -> None:
    await page.evaluate("hash => { location.hash = hash; }", f"#/workflows/{workflow_id}")
    await expect(page.locator("#wf-title")).to_have_text(name)


async def read_events(
    http: httpx.AsyncClient, stack: ProcessStack, run_id: str, until: str | None = None
) -> None:
    """Read the run's events (which starts a run created by the API) up to the event named, or
    to the stream's end."""
    async with http.stream(
        "GET", f"/v1/runs/{run_id}/events", headers=stack.headers, timeout=60
    ) as response:
        async for line in response.aiter_lines():
            if until and line == f"event: {until}":
                return


async def finished_workflow(
    http: httpx.AsyncClient, stack: ProcessStack, name: str, step_list: list[dict[str, Any]]
) -> dict[str, Any]:
    workflow = await create_workflow(http, stack, name, step_list)
    await read_events(http, stack, await start_run(http, stack, workflow["id"]))
    return workflow


async def test_a_workflow_deleted_elsewhere_offers_nothing_of_it(
    strict_page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    page = strict_page
    workflow = await finished_workflow(http, stack, "Doomed", steps(3, tokens=4))
    await open_workflow(page, workflow["id"], "Doomed")
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed")
    await page.locator(".actions").get_by_role("button", name="Re-run").focus()
    response = await http.delete(f"/v1/workflows/{workflow['id']}", headers=stack.headers)
    assert response.status_code in (200, 204), response.text

    await page.evaluate("() => window.dispatchEvent(new Event('focus'))")
    await expect(page.locator("#wf-title")).to_have_text("Workflow not found")
    await expect(page.locator("#steps")).to_contain_text("It may have been deleted.")
    # Nothing of what it was is offered nor shown: no action, step, pill, badge or run line.
    await expect(page.locator(".actions button")).to_have_count(0)
    await expect(page.locator(".navigator .pill")).to_have_count(0)
    await expect(page.locator(".step")).to_have_count(0)
    await expect(page.locator("#wf-status")).to_be_empty()
    await expect(page.locator("#run-line")).to_be_empty()
    await expect(page.locator(".settings")).to_be_hidden()
    await expect(page.locator(".navigator")).to_be_hidden()
    assert await detail.get_attribute("data-run-id") is None
    await expect(page.locator("#wf-title")).to_be_focused()  # its pressed action is gone
    assert await page.title() == "Workflow not found · nyxflow"

    # The page reads it no more: back in view, nothing is asked and the title stays.
    asked: list[str] = []

    def seen(request: Request) -> None:
        if workflow["id"] in request.url:
            asked.append(request.url)

    page.on("request", seen)
    await page.evaluate(
        "() => { window.dispatchEvent(new Event('focus'));"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    await page.wait_for_timeout(6_000)  # past the 5 s the page reads a workflow again
    assert not asked, f"a deleted workflow read again: {asked}"
    await expect(page.locator("#wf-title")).to_have_text("Workflow not found")
    await expect(page.locator(".actions button")).to_have_count(0)


async def test_the_list_follows_runs_and_workflows_made_elsewhere_keeping_the_focus(
    strict_page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    page = strict_page
    # Rows enough that the list scrolls in the short viewport, the watched one last (newest
    # first: created first).
    workflow = await create_workflow(http, stack, "Listed", steps(2, tokens=40, token_delay_ms=60))
    for i in range(8):
        await create_workflow(http, stack, f"Filler {i}", steps(1, tokens=2))
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, stack, run_id, until="run_started")
    await page.evaluate("() => { location.hash = '#/x'; location.hash = '#/'; }")
    row = page.locator(f"tr[data-workflow-id='{workflow['id']}']")
    await expect(row.locator(".badge")).to_have_text("running")
    delete = row.get_by_role("button", name="Delete")
    await expect(delete).to_be_disabled()
    duplicate = row.get_by_role("button", name="Duplicate")
    await duplicate.focus()  # a keyboard user on the row while its run goes on
    scrolled = await page.evaluate("() => window.scrollY")
    assert scrolled > 0, "the list should scroll to the focused row"

    await read_events(http, stack, run_id)  # to the run's end
    assert (await get_run(http, stack, run_id))["status"] == "completed"
    # No reload, no focus event: the list reads itself again.
    await expect(row.locator(".badge")).to_have_text("completed", timeout=10_000)
    await expect(delete).to_be_enabled()
    await expect(duplicate).to_be_focused()
    assert await page.evaluate("() => window.scrollY") == scrolled

    made = await create_workflow(http, stack, "Made elsewhere", steps(1, tokens=2))
    await expect(page.locator(f"tr[data-workflow-id='{made['id']}']")).to_be_visible(timeout=10_000)
    await expect(duplicate).to_be_focused()

    # Away from the list it is read no more.
    listed: list[str] = []
    page.on(
        "request",
        lambda r: listed.append(r.url) if r.url.split("?")[0].endswith(LIST_PATH) else None,
    )
    await open_workflow(page, workflow["id"], "Listed")
    await page.wait_for_timeout(4_000)  # past the 3 s the list is read again
    assert not listed, f"the list read while a workflow is shown: {listed}"


async def first_step_of_a_finished_run(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack, name: str, step_list: list[Any]
) -> tuple[dict[str, Any], Locator]:
    """The workflow, its run finished, opened on its first step."""
    workflow = await finished_workflow(http, stack, name, step_list)
    await open_workflow(page, workflow["id"], name)
    await expect(page.locator(".detail")).to_have_attribute("data-run-status", "completed")
    first = workflow["steps"][0]
    await page.locator(f".pill[data-step-id='{first['id']}']").click()
    return workflow, page.locator(f"#step-{first['id']}")


def drafts(alternatives: int) -> dict[str, Any]:
    return {
        **steps(1, tokens=40, token_delay_ms=50)[0],
        "name": "Draft",
        "alternatives": alternatives,
    }


async def started_elsewhere(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack, path: str, body: Any = None
) -> None:
    """A run started by the API (as from another tab), and seen by the page."""
    response = await http.post(path, json=body, headers=stack.headers)
    assert response.status_code in (200, 201), response.text
    await page.evaluate("() => window.dispatchEvent(new Event('focus'))")
    await expect(page.locator(".detail")).to_have_attribute("data-run-id", response.json()["id"])


async def test_a_run_started_elsewhere_moves_a_gone_step_buttons_focus_to_its_step(
    strict_page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    page = strict_page
    workflow, box = await first_step_of_a_finished_run(
        page, http, stack, "FocusKept", steps(2, tokens=40, token_delay_ms=50)
    )
    await box.get_by_role("button", name="Retry step").focus()
    await started_elsewhere(page, http, stack, f"/v1/workflows/{workflow['id']}/rerun")
    await expect(box.get_by_role("button", name="Retry step")).to_have_count(0)
    await expect(box.locator("summary")).to_be_focused()


async def test_a_run_started_elsewhere_moves_a_disabled_use_this_ones_focus_to_its_step(
    strict_page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    page = strict_page
    later = {**steps(1, tokens=40, token_delay_ms=50)[0], "name": "Later"}
    workflow, box = await first_step_of_a_finished_run(
        page, http, stack, "FocusAlt", [drafts(3), later]
    )
    tabs = box.get_by_role("tab")
    await expect(tabs).to_have_count(3)
    await tabs.nth(1).click()
    use = box.get_by_role("button", name="Use this one")
    await use.focus()
    # Its next step retried elsewhere: a run is on, no alternative can be chosen meanwhile.
    retried = workflow["steps"][1]["id"]
    await started_elsewhere(page, http, stack, f"/v1/steps/{retried}/retry", {"cascade": False})
    await expect(use).to_be_disabled()
    await expect(box.locator("summary")).to_be_focused()


async def test_a_rerun_elsewhere_moves_the_focus_of_hidden_alternatives_to_their_step(
    strict_page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    page = strict_page
    workflow, box = await first_step_of_a_finished_run(
        page, http, stack, "FocusHidden", [drafts(2)]
    )
    await box.get_by_role("tab").nth(1).focus()
    await started_elsewhere(page, http, stack, f"/v1/workflows/{workflow['id']}/rerun")
    await expect(box.locator(".alternatives")).to_be_hidden()
    await expect(box.locator("summary")).to_be_focused()

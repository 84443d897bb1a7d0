"""A workflow reviewing two repositories, on the page: a patch card for each review step, in
step order, headed by its name, with its own download; each patch read once for the run, and a
review without a patch (404) shows nothing for its step."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.async_api import Locator, Page, Request, Route, expect

from tests.browser.test_page import open_workflow
from tests.e2e.test_artifacts_per_step_http import scan_and_review
from tests.integration.test_artifacts_per_step import UTIL_DIFF
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.repos import GOOD_DIFF, planted_repo
from tests.support.sse_client import read_events

PATCH_URL = re.compile(r"/v1/runs/[^/]+/artifacts/patch(\?|$)")


async def two_reviews(http: httpx.AsyncClient, stack: ProcessStack, tmp_path: Path) -> str:
    """A workflow reviewing a patch of each of two repositories: Scan A, Review A, Scan B,
    Review B; its id."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    steps = [
        *scan_and_review("A", planted_repo(tmp_path / "a"), GOOD_DIFF),
        *scan_and_review("B", planted_repo(tmp_path / "b"), UTIL_DIFF),
    ]
    return str((await create_workflow(http, stack, "two repositories", steps))["id"])


async def downloaded(page: Page, link: Locator) -> tuple[str, str]:
    """What clicking the link saves: its file's name and text."""
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    return download.suggested_filename, Path(await download.path()).read_text()


async def test_each_review_step_shows_its_own_patch(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack, tmp_path: Path
) -> None:
    workflow_id = await two_reviews(http, stack, tmp_path)
    asked: list[str] = []

    def note(request: Request) -> None:
        if PATCH_URL.search(request.url):
            asked.append(request.url)

    page.on("request", note)
    await open_workflow(page, workflow_id, "two repositories")
    await page.get_by_role("button", name="Start", exact=True).click()  # followed event by event
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=60_000)
    run = await get_run(http, stack, str(await detail.get_attribute("data-run-id")))
    assert run["status"] == "completed", run["error"]
    _, review_a, _, review_b = run["steps"]

    cards = page.locator("section.patch")
    await expect(cards).to_have_count(2)
    await expect(cards.locator("h3")).to_have_text(["Patch · Review A", "Patch · Review B"])
    first, second = cards.nth(0), cards.nth(1)
    assert await first.get_attribute("data-step-id") == review_a["id"]
    assert await second.get_attribute("data-step-id") == review_b["id"]
    await expect(first.get_by_label("Patch of Review A", exact=True)).to_contain_text(
        "+    return a + b"
    )
    await expect(first.locator(".diff-file")).to_contain_text(["--- a/calc.py", "+++ b/calc.py"])
    await expect(first).not_to_contain_text("util.py")
    await expect(second.get_by_label("Patch of Review B", exact=True)).to_contain_text(
        "return text.upper() + '!'"
    )
    await expect(second.locator(".diff-file")).to_contain_text(["--- a/util.py", "+++ b/util.py"])
    await expect(second).not_to_contain_text("calc.py")

    # Each its own download, named by its step, holding that step's patch as the API gives it.
    for card, review in ((first, review_a), (second, review_b)):
        name = review["name"]
        link = card.get_by_role("link", name=f"Download patch of {name}")
        await expect(link).to_have_text("Download patch")
        stored = await http.get(
            f"/v1/runs/{run['id']}/artifacts/patch",
            params={"step_id": review["id"]},
            headers=stack.headers,
        )
        assert stored.status_code == 200, stored.text
        slug = name.replace(" ", "-")
        assert await downloaded(page, link) == (f"{run['id']}-{slug}.patch", stored.text)

    # Read once for the run, not at each event nor when the page reads the workflow again.
    async with page.expect_response(re.compile(r"/v1/workflows/[^/?]+(\?.*)?$")):
        await page.evaluate("() => window.dispatchEvent(new Event('focus'))")
    await expect(cards).to_have_count(2)
    assert sorted(asked) == sorted(
        f"{stack.base_url}/v1/runs/{run['id']}/artifacts/patch?step_id={r['id']}"
        for r in (review_a, review_b)
    )


async def test_a_review_without_a_patch_shows_nothing_for_its_step(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack, tmp_path: Path
) -> None:
    workflow_id = await two_reviews(http, stack, tmp_path)
    run_id = await start_run(http, stack, workflow_id)
    events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    assert events[-1].event == "run_completed", events[-1].data
    _, review_a, _, review_b = (await get_run(http, stack, run_id))["steps"]

    async def none_for_a(route: Route) -> None:
        if f"step_id={review_a['id']}" in route.request.url:
            await route.fulfill(status=404, json={"error": {"code": "not_found"}})
        else:
            await route.continue_()

    await page.route(PATCH_URL, none_for_a)
    await open_workflow(page, workflow_id, "two repositories")

    cards = page.locator("section.patch")
    await expect(cards.locator("h3")).to_have_text(["Patch · Review B"])
    assert await cards.get_attribute("data-step-id") == review_b["id"]
    await expect(cards.get_by_label("Patch of Review B", exact=True)).to_contain_text("util.py")

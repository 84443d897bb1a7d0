"""The page in a real browser against the real stack: start and follow runs live, the step
navigator, a broken and resumed event stream, fan-out, failure and alternatives."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, Response, Route, expect

from nyxflow import events as ev
from tests.browser.conftest import ARTIFACTS
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, get_run, start_run, steps
from tests.support.inprocess import API_KEY
from tests.support.processes import ProcessStack
from tests.support.repos import model_replies, planted_repo
from tests.support.sse_client import read_events

EVENTS_URL = re.compile(r"/v1/runs/[^/]+/events(\?|$)")
STORED_URL = re.compile(r"/v1/runs/[^/]+/events/stored\?")
RUN_URL = re.compile(r"/v1/runs/[^/?]+$")
ITEMS_URL = re.compile(r"/v1/runs/[^/]+/steps/[^/]+/items\?")
WORKFLOW_URL = re.compile(r"/v1/workflows/[^/?]+(\?.*)?$")
BLUE, GREEN = "rgb(91, 155, 255)", "rgb(63, 185, 80)"


def template(name: str, count: int, params: str) -> str:
    body = "".join(f"  - name: Step {i + 1}\n    params: {params}\n" for i in range(count))
    return f"name: {name}\nsteps:\n{body}"


def headings(markdown: str) -> list[str]:
    return [line[3:].strip() for line in markdown.splitlines() if line.startswith("## ")]


def words(markdown: str) -> str:
    """The text a reader sees of rendered markdown: heading marks gone, spaces collapsed."""
    lines = (re.sub(r"^\s*#+\s*", "", line) for line in markdown.splitlines())
    return " ".join(" ".join(lines).split())


async def text_of(page: Page, selector: str) -> str:
    return " ".join((await page.locator(selector).text_content() or "").split())


async def shown_run_id(page: Page) -> str:
    run_id = await page.locator(".detail").get_attribute("data-run-id")
    assert run_id, "the page shows no run"
    return run_id


async def create_from_page(page: Page, text: str) -> str:
    await page.get_by_label("Template (YAML or JSON)").fill(text)
    await page.get_by_role("button", name="Create workflow").click()
    await page.wait_for_url(re.compile(r"#/workflows/"))
    return page.url.rsplit("/", 1)[1]


async def start_from_page(page: Page, text: str) -> str:
    workflow_id = await create_from_page(page, text)
    await page.get_by_role("button", name="Start", exact=True).click()
    return workflow_id


async def open_workflow(page: Page, workflow_id: str, name: str) -> None:
    await page.evaluate("hash => { location.hash = hash; }", f"#/workflows/{workflow_id}")
    await expect(page.locator("#wf-title")).to_have_text(name)


async def finished_run(
    http: httpx.AsyncClient, stack: ProcessStack, workflow_id: str, count: int
) -> list[dict[str, Any]]:
    async def runs() -> list[dict[str, Any]]:
        response = await http.get(f"/v1/workflows/{workflow_id}/runs", headers=stack.headers)
        found: list[dict[str, Any]] = response.json()["runs"]
        return found

    return await eventually(
        runs,
        lambda rs: len(rs) == count and rs[0]["status"] not in ("pending", "running"),
        timeout_s=20,
        what=f"run {count} finished",
    )


WATCH_MODES = """() => {
  const detail = document.querySelector(".detail");
  window.liveModes = [detail.dataset.live];
  new MutationObserver(() => window.liveModes.push(detail.dataset.live))
    .observe(detail, { attributes: true, attributeFilter: ["data-live"] });
}"""


async def shows_the_whole_run(page: Page, http: httpx.AsyncClient, stack: ProcessStack) -> None:
    """Each event applied once, in order, and every step's text as the database has it."""
    run = await get_run(http, stack, await shown_run_id(page))
    applied = await page.evaluate("() => window.nyxflow.detail.appliedSeqs")
    assert applied == list(range(1, run["last_seq"] + 1)), "an event lost or applied twice"
    streamed = await page.evaluate("() => window.nyxflow.detail.streamed")
    for step in run["steps"]:
        assert step["status"] == "completed"
        assert streamed[step["id"]] == step["output"], step["name"]
        assert await text_of(page, f"#step-{step['id']} .output") == words(step["output"])


async def test_start_from_the_page_pills_go_grey_blue_green(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    await page.get_by_label("Template (YAML or JSON)").fill(
        "name: Bad\nsteps:\n  - name: A\n    kind: teleport\n"
    )
    await page.get_by_role("button", name="Create workflow").click()
    alert = page.locator("#create-error")
    await expect(alert.locator("code.field")).to_have_text("steps[0].kind")
    assert (await alert.inner_text()).startswith("steps[0].kind: ")

    workflow_id = await create_from_page(
        page, template("Twenty", 20, "{tokens: 12, token_delay_ms: 25}")
    )
    pills = page.locator(".navigator .pill")
    await expect(pills).to_have_count(20)
    assert await pills.evaluate_all("ps => ps.map(p => p.dataset.status)") == ["pending"] * 20
    await page.evaluate(
        """() => {
          const seen = (window.pillHistory = {});
          const note = (p) => {
            const h = (seen[p.dataset.stepId] ||= []);
            if (h[h.length - 1] !== p.dataset.status) h.push(p.dataset.status);
          };
          document.querySelectorAll(".pill").forEach(note);
          new MutationObserver((changes) => changes.forEach((c) => note(c.target))).observe(
            document.querySelector(".pills"),
            { subtree: true, attributes: true, attributeFilter: ["data-status"] });
        }"""
    )

    await page.get_by_role("button", name="Start", exact=True).click()
    running = page.locator('.pill[aria-current="step"]')
    await expect(running).to_have_count(1)
    assert await running.locator(".dot").evaluate("d => getComputedStyle(d).backgroundColor") == (
        BLUE
    )
    step_id = await running.get_attribute("data-step-id")
    assert await running.get_attribute("href") == f"#step-{step_id}"
    await expect(page.get_by_role("button", name="Pause")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel")).to_be_visible()

    await expect(page.locator(".detail")).to_have_attribute(
        "data-run-status", "completed", timeout=30_000
    )
    await expect(pills.locator(".dot").first).to_have_css("background-color", GREEN)
    history = await page.evaluate("() => window.pillHistory")
    assert len(history) == 20
    assert all(h == ["pending", "running", "completed"] for h in history.values()), history
    await expect(page.locator('.pill[aria-current="step"]')).to_have_count(0)
    await expect(page.get_by_role("button", name="Re-run")).to_be_visible()
    await expect(page.get_by_role("button", name="Start", exact=True)).to_have_count(0)

    await page.screenshot(path=str(ARTIFACTS / "twenty-steps-completed.png"), full_page=True)

    run = await get_run(http, stack, await shown_run_id(page))
    assert run["workflow_id"] == workflow_id and run["status"] == "completed"
    last = run["steps"][-1]
    assert await text_of(page, f"#step-{last['id']} .output") == words(last["output"])


async def test_navigator_jumps_expands_collapses_and_sticks(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "Navigate", steps(20, tokens=30))
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    await page.set_viewport_size({"width": 375, "height": 740})
    await open_workflow(page, workflow["id"], "Navigate")

    fifteenth = workflow["steps"][14]
    step = page.locator(f"#step-{fifteenth['id']}")
    pill = page.locator(".navigator .pill").nth(14)
    await expect(pill).to_have_attribute("title", re.compile(r"^15\. s14"))
    await pill.click()
    await expect(step).to_have_js_property("open", True)
    await expect(step).to_be_in_viewport()
    await expect(step.locator(".output")).to_be_visible()
    assert page.url.endswith(f"#/workflows/{workflow['id']}"), "the route is kept"

    await page.get_by_role("button", name="Expand all").click()
    details = page.locator("details.step")
    assert await details.evaluate_all("ds => ds.every(d => d.open)")
    await page.evaluate("() => window.scrollTo(0, document.body.scrollHeight / 2)")
    await page.wait_for_function("() => window.scrollY > 500")
    box = await page.locator("nav.navigator").bounding_box()
    assert box is not None and abs(box["y"]) <= 1, box
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 375
    await page.screenshot(path=str(ARTIFACTS / "navigator-375px.png"))

    await page.get_by_role("button", name="Collapse all").click()
    assert await details.evaluate_all("ds => ds.length === 20 && ds.every(d => !d.open)")
    await page.keyboard.press("Tab")  # keyboard reaches the controls
    assert await page.evaluate("() => document.activeElement.tagName") in ("A", "BUTTON", "SUMMARY")


async def test_a_broken_stream_resumes_without_losing_or_repeating_events(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(
        http, stack, "Reconnect", steps(6, tokens=16, token_delay_ms=20)
    )
    await open_workflow(page, workflow["id"], "Reconnect")
    cut_after = 12
    seen: list[int] = []

    async def first_events(url: str) -> tuple[str, int]:
        """The first `cut_after` event frames as the server sent them (this starts the run)."""
        text, count, last = "", 0, 0
        async with http.stream("GET", url, headers=stack.headers) as response:
            frame: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    frame.append(line)
                    continue
                if any(f.startswith("event:") for f in frame):
                    text += "\n".join(frame) + "\n\n"
                    count += 1
                    last = int(next(f for f in frame if f.startswith("id:"))[3:])
                frame = []
                if count == cut_after:
                    break
        return text, last

    async def handle(route: Route) -> None:
        if route.request.resource_type != "eventsource":
            await route.continue_()
            return
        # What the page has applied when it (re)connects. Chromium adds Last-Event-ID below
        # the interception layer, so the header itself is not visible here.
        seen.append(await page.evaluate("() => window.nyxflow.detail.lastSeq"))
        if len(seen) == 1:  # the connection ends mid-run, after a dozen events
            body, _ = await first_events(route.request.url)
            await route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                body="retry: 200\n\n" + body,
            )
        elif len(seen) == 2:  # the reconnect: replay from earlier, so five arrive twice
            headers = {**route.request.headers, "last-event-id": str(cut_after - 5)}
            await route.continue_(headers=headers)
        else:
            await route.continue_()

    await page.route(EVENTS_URL, handle)
    await page.get_by_role("button", name="Start", exact=True).click()
    await expect(page.locator(".detail")).to_have_attribute(
        "data-run-status", "completed", timeout=20_000
    )
    assert seen == [0, cut_after], "one cut, one reconnect, after the first dozen events"
    await shows_the_whole_run(page, http, stack)
    run_id = await shown_run_id(page)
    applied = await page.evaluate("() => window.nyxflow.detail.appliedSeqs")
    replay = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    assert Counter(f.event for f in replay)[ev.RUN_STARTED] == 1
    assert [f.seq for f in replay] == applied


MIXED = """
name: Mixed
steps:
  - name: Outline
    alternatives: 2
    params: {items: 13, tokens: 26, token_delay_ms: 5}
  - name: Detail
    kind: fan_out
    source: Outline
    split: headings
    concurrency: 4
    prompt: "Detail: {{ item }}"
    params: {tokens: 4, token_delay_ms: 10}
  - name: Broken
    prompt: This one fails.
    params: {fail: the model is on fire}
"""


async def test_fan_out_failure_retry_and_alternatives(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow_id = await create_from_page(page, MIXED)
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "failed", timeout=20_000)
    outline, fan_out, broken = (await get_run(http, stack, await shown_run_id(page)))["steps"]

    fan = page.locator(f"#step-{fan_out['id']}")
    await expect(fan.locator(".fanout-count")).to_have_text("13/13")
    await expect(fan.locator("progress")).to_have_attribute("value", "13")
    await expect(fan.locator(".item")).to_have_count(13)
    await expect(fan.locator(".item").last.locator(".item-output")).to_have_text(
        words(fan_out["items"][12]["output"])
    )

    failed = page.locator(f"#step-{broken['id']}")
    await expect(failed).to_have_js_property("open", True)
    await expect(failed.locator(".step-error")).to_contain_text("the model is on fire")
    await expect(page.locator(f".pill[data-step-id='{broken['id']}'] .dot")).to_have_css(
        "background-color", "rgb(255, 107, 99)"
    )
    await expect(page.get_by_role("button", name="Resume")).to_be_visible()

    first = page.locator(f"#step-{outline['id']}")
    await page.locator(f".pill[data-step-id='{outline['id']}']").click()
    tabs = first.get_by_role("tab")
    await expect(tabs).to_have_count(2)
    assert outline["selected_index"] == 0
    await tabs.nth(1).click()
    await expect(tabs.nth(1)).to_have_attribute("aria-selected", "true")
    await first.get_by_role("button", name="Use this one").click()
    await expect(tabs.nth(1)).to_contain_text("in use")
    chosen = (await get_run(http, stack, await shown_run_id(page)))["steps"][0]
    assert chosen["selected_index"] == 1
    assert chosen["output"] == outline["alternatives"][1]["output"] != outline["output"]
    await expect(first.locator(".output")).to_have_text(words(chosen["output"]))
    # The fan-out was made from the other outline: back to never-executed, and a paused run
    # says so.
    paused = await finished_run(http, stack, workflow_id, 2)
    assert paused[0]["status"] == "paused" and "Detail" not in paused[0]["error"]
    await expect(fan.locator(".item")).to_have_count(0)

    await page.get_by_role("button", name="Expand all").click()
    await page.screenshot(path=str(ARTIFACTS / "fan-out-failure-alternatives.png"), full_page=True)
    await failed.get_by_role("button", name="Retry step").click()
    runs = await finished_run(http, stack, workflow_id, 3)
    assert runs[0]["status"] == "failed"
    await expect(detail).to_have_attribute("data-run-id", runs[0]["id"])
    await expect(detail).to_have_attribute("data-run-status", "failed")
    await expect(failed.locator(".step-error")).to_contain_text("the model is on fire")
    again = await read_events(http, f"/v1/runs/{runs[0]['id']}/events", stack.headers)
    assert again[0].event == ev.STEP_RETRIED and again[0].json["step_id"] == broken["id"]
    assert [e.json["name"] for e in again if e.event == ev.STEP_STARTED] == ["Detail", "Broken"]
    redone = (await get_run(http, stack, runs[0]["id"]))["steps"][1]["items"]
    assert [i["heading"] for i in redone] == headings(chosen["output"])
    await expect(fan.locator(".item")).to_have_count(13)


async def test_the_keyboard_keeps_its_place_through_workflow_actions(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "Keys", steps(3, tokens=30, token_delay_ms=100))
    await open_workflow(page, workflow["id"], "Keys")
    detail = page.locator(".detail")
    button = page.get_by_role("button")

    await button.filter(has_text=re.compile("^Start$")).focus()
    await page.keyboard.press("Enter")  # Start is gone once the run is on: the first action
    await expect(page.get_by_role("button", name="Pause")).to_be_focused()
    # Running, not still pending (under load the claim can lag): a pending run pauses at once,
    # never "requested".
    await expect(detail).to_have_attribute("data-run-status", "running")
    await page.keyboard.press("Enter")
    await expect(page.locator("#run-line")).to_contain_text("pause requested")
    await expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    await expect(detail).to_have_attribute("data-run-status", "paused", timeout=20_000)
    await expect(page.get_by_role("button", name="Resume")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(detail).to_have_attribute("data-run-status", "running")
    await expect(page.get_by_role("button", name="Pause")).to_be_focused()
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=20_000)
    await expect(page.get_by_role("button", name="Re-run")).to_be_focused()

    first = page.locator(f"#step-{workflow['steps'][0]['id']}")
    await page.locator(f".pill[data-step-id='{workflow['steps'][0]['id']}']").click()
    await first.get_by_role("button", name="Retry step").focus()
    await page.keyboard.press("Enter")  # its run starts: no step can be retried meanwhile
    await expect(page.get_by_role("button", name="Pause")).to_be_focused()
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=20_000)


async def test_markdown_is_sanitised(page: Page) -> None:
    html = await page.evaluate(
        """async () => (await import("/static/markdown.js")).renderMarkdown(
          "# Title\\n<script>alert(1)</script> <img src=x onerror=alert(1)>\\n\\n" +
          "- **bold** and *it* and `<b>code</b>`\\n- [ok](https://example.com/a_b_c)\\n" +
          "1. [bad](javascript:alert(1)) [x](https://e.com/\\"onmouseover=alert(1))\\n\\n" +
          "```js\\n<b>raw</b>\\n```")"""
    )
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;raw&lt;/b&gt;" in html
    assert "<h3>Title</h3>" in html
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>&lt;b&gt;code&lt;/b&gt;</code>" in html
    assert '<a href="https://example.com/a_b_c" rel="noopener noreferrer nofollow"' in html
    assert 'href="javascript' not in html and "[bad](javascript:alert(1))" in html
    assert '"onmouseover' not in html
    assert "<ul><li>" in html and "<ol><li>" in html


PLAN = """name: Plan and prompts
steps:
  - name: Outline
    params: {items: 2, tokens: 6}
  - name: Synthesis
    kind: synthesis
    prompt: "Combine: {{ steps.Outline.output }}"
    generates: implementation_prompt
    params: {items: 2, tokens: 30, token_delay_ms: 20}
"""


async def test_steps_generated_during_the_run_stream_their_whole_text(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    snapshots = 0

    async def late(route: Route) -> None:
        """Every snapshot after the first answers once the run is over: only events tell."""
        nonlocal snapshots
        snapshots += 1
        if snapshots > 1:
            run_id = route.request.url.rsplit("/", 1)[1]
            await eventually(
                lambda: get_run(http, stack, run_id),
                lambda run: run["status"] not in ("pending", "running"),
                timeout_s=20,
                what="the run over",
            )
        await route.continue_()

    await page.route(RUN_URL, late)
    await start_from_page(page, PLAN)
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=30_000)
    run = await get_run(http, stack, await shown_run_id(page))
    assert [s["auto_generated"] for s in run["steps"]] == [False, False, True, True]
    assert snapshots > 2, "no snapshot was asked for while the run went on"
    streamed = await page.evaluate("() => window.nyxflow.detail.streamed")
    for step in run["steps"]:
        assert streamed.get(step["id"]) == step["output"], step["name"]
        assert await text_of(page, f"#step-{step['id']} .output") == words(step["output"])
    await expect(page.locator(".navigator .pill")).to_have_count(4)


RENDER = """async (source) => {
  const box = document.createElement("div");
  box.innerHTML = (await import("/static/markdown.js")).renderMarkdown(source);
  return [box.innerHTML, [...box.querySelectorAll("ol")].map((o) => o.start), box.innerText];
}"""


async def test_markdown_keeps_the_numbers_hashes_and_asterisks_of_the_text(page: Page) -> None:
    html, starts, _ = await page.evaluate(
        RENDER, "1. Install\n\n   Run the installer.\n\n2. Configure\n3. Deploy\n"
    )
    assert starts == [1, 2], html
    assert "<ol><li>Install</li></ol>" in html and '<ol start="2"><li>Configure' in html

    html, _, _ = await page.evaluate(RENDER, "## Porting <b>it</b> to C#\n## Done ##\n")
    assert "<h4>Porting &lt;b&gt;it&lt;/b&gt; to C#</h4>" in html and "<h4>Done</h4>" in html

    html, _, text = await page.evaluate(RENDER, "The area is 2 * 3 * 4 = 24 m², *really*.\n")
    assert "2 * 3 * 4 = 24" in text and html.count("<em>") == 1, html
    assert "<em>really</em>" in html


async def test_markdown_renders_code_inside_a_link(page: Page) -> None:
    html, _, text = await page.evaluate(RENDER, "See [the `run` command](https://example.com/d).")
    assert "\u0000" not in html, html
    assert '<a href="https://example.com/d"' in html and ">the <code>run</code> command</a>" in html
    assert text == "See the run command."

    html, _, text = await page.evaluate(RENDER, "[a](https://x.test/`y`)")
    assert "\u0000" not in html and "<a " not in html, html  # code is no address: left as text
    assert text == "[a](https://x.test/y)"


async def test_without_an_event_stream_the_page_polls_until_the_run_ends(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "Polling", steps(3, tokens=6, token_delay_ms=20))
    await open_workflow(page, workflow["id"], "Polling")
    refused: list[str] = []

    async def refuse(route: Route) -> None:
        if route.request.resource_type == "eventsource":
            refused.append(route.request.url)
            await route.fulfill(status=503, body="")
        else:  # the page's one-off request that starts a pending run
            await route.continue_()

    await page.route(EVENTS_URL, refuse)
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-live", "polling")
    await expect(page.locator("#run-line")).to_contain_text("refreshing every 3 s")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=15_000)
    await expect(detail).to_have_attribute("data-live", "off")
    assert len(refused) == 3, "three failed connects, then polling"
    run = await get_run(http, stack, await shown_run_id(page))
    for step in run["steps"]:
        assert await text_of(page, f"#step-{step['id']} .output") == words(step["output"])


async def test_a_run_that_ended_while_the_page_was_away_shows_ended_without_reconnects(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """The stream came back empty once the run had ended (its last event already seen): the
    browser reconnected every 3 s, and the page counted each as a failure. Now it is a 204,
    which ends EventSource for good, and the page reads what it lacks and shows the end."""
    workflow = await create_workflow(http, stack, "Ended", steps(2, tokens=8, token_delay_ms=5))
    await open_workflow(page, workflow["id"], "Ended")
    await page.evaluate(WATCH_MODES)
    sources: list[str] = []

    async def handle(route: Route) -> None:
        if route.request.resource_type != "eventsource":
            await route.continue_()
            return
        sources.append(route.request.url)
        if len(sources) == 1:
            # The run goes to its end meanwhile (this starts it), and the browser comes back
            # with its last event's id, as a reconnect does after a connection that dropped.
            events = await read_events(http, route.request.url, stack.headers)
            last = str(events[-1].seq)
            await route.continue_(headers={**route.request.headers, "last-event-id": last})
        else:
            await route.continue_()

    await page.route(EVENTS_URL, handle)
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=20_000)
    await expect(detail).to_have_attribute("data-live", "off")
    await shows_the_whole_run(page, http, stack)
    await asyncio.sleep(4)  # past the stream's retry: a reconnect would have come by now
    assert len(sources) == 1, f"the page or the browser connected again: {sources}"
    assert "polling" not in await page.evaluate("() => window.liveModes"), "taken for a failure"
    await expect(page.locator("#action-error")).to_be_empty()
    await expect(page.locator("#run-line")).to_contain_text("completed")


async def test_polling_reads_only_the_events_after_the_last_applied_never_the_whole_run(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Without EventSource the page read the whole run (every step's output and items) every
    3 s; now each poll asks for the events after the last one it applied, and applies them
    as the stream's, the streamed text included."""
    workflow = await create_workflow(http, stack, "Polled", steps(3, tokens=24, token_delay_ms=100))
    await open_workflow(page, workflow["id"], "Polled")
    await page.evaluate("() => { delete window.EventSource; }")
    whole: list[str] = []
    asked: list[tuple[int, list[int]]] = []  # (after_seq, the seqs answered)
    reads: list[asyncio.Future[None]] = []

    async def note(response: Response) -> None:
        path = response.url.removeprefix(stack.base_url)
        if response.request.method != "GET":
            return
        if RUN_URL.search(path):
            whole.append(path)
        elif STORED_URL.search(path):
            after = int(re.search(r"after_seq=(\d+)", path).group(1))  # type: ignore[union-attr]
            asked.append((after, [e["seq"] for e in (await response.json())["events"]]))

    page.on("response", lambda response: reads.append(asyncio.ensure_future(note(response))))
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-live", "polling")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=30_000)
    await expect(detail).to_have_attribute("data-live", "off")
    await asyncio.gather(*reads)

    await shows_the_whole_run(page, http, stack)
    assert len(whole) <= 2, f"the whole run was read {len(whole)} times"  # start, end
    assert len([seqs for _, seqs in asked if seqs]) >= 2, "the run ended before it was polled"
    answered = [seq for _, seqs in asked for seq in seqs]
    assert answered == sorted(set(answered)), "an event was read twice"
    for after, seqs in asked:
        assert not seqs or seqs[0] == after + 1


async def test_after_a_gateway_restart_the_page_streams_again_keeping_the_text_so_far(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "Deploy", steps(1, tokens=500, token_delay_ms=60))
    (step,) = workflow["steps"]
    await open_workflow(page, workflow["id"], "Deploy")
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-live", "sse")
    output = page.locator(".step .output")
    await expect(output).to_have_text(re.compile(r"^(\S+\s+){30}"))
    before = await page.evaluate(
        """() => {
          const output = document.querySelector(".step .output");
          const count = () => output.textContent.split(/\\s+/).length;
          window.fewestWords = count();
          const note = () => { window.fewestWords = Math.min(window.fewestWords, count()); };
          const what = { subtree: true, childList: true, characterData: true };
          new MutationObserver(note).observe(output, what);
          return window.fewestWords;
        }"""
    )

    stack.kill("gateway")  # a deploy, mid-step: the page falls back to polling
    await expect(detail).to_have_attribute("data-live", "polling", timeout=30_000)
    stack.start("gateway")
    await expect(detail).to_have_attribute("data-live", "sse", timeout=15_000)
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=40_000)
    assert await page.evaluate("() => window.fewestWords") >= before, "the text was wiped"
    run = await get_run(http, stack, await shown_run_id(page))
    streamed = await page.evaluate("() => window.nyxflow.detail.streamed")
    assert streamed[step["id"]] == run["steps"][0]["output"]
    assert await text_of(page, f"#step-{step['id']} .output") == words(run["steps"][0]["output"])


async def test_a_pipeline_shows_its_phase_and_its_patch(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack, tmp_path: Path
) -> None:
    repo = planted_repo(tmp_path)
    headers = stack.headers
    project = (await http.post("/v1/projects", json={"name": "page-pipes"}, headers=headers)).json()
    repository = (
        await http.post(
            f"/v1/projects/{project['id']}/repositories",
            json={"owner": "acme", "repo": "page-shop", "path": str(repo)},
            headers=headers,
        )
    ).json()
    run = (
        await http.post(
            f"/v1/repositories/{repository['id']}/pipelines",
            json={"pipeline": "auto-fix", "params": {"replies": model_replies(), "tokens": 3}},
            headers=headers,
        )
    ).json()
    events = await read_events(http, f"/v1/runs/{run['id']}/events", headers)
    assert events[-1].event == ev.RUN_COMPLETED

    await open_workflow(page, run["workflow_id"], "auto-fix: acme/page-shop")
    await expect(page.locator("#run-phase")).to_contain_text("reviewing")
    patch = page.locator("#patch")
    await expect(patch).to_be_visible()
    # Its one review's card, as ever: "Patch", the combined patch and the run's download.
    await expect(page.locator("section.patch h3")).to_have_text(["Patch"])
    await expect(patch.get_by_label("Combined patch").locator(".diff-add")).to_contain_text(
        ["+    return a + b"]
    )
    download = patch.get_by_role("link", name="Download patch", exact=True)
    await expect(download).to_have_attribute("download", f"{run['id']}.patch")
    await page.screenshot(path=str(ARTIFACTS / "pipeline-patch.png"), full_page=True)


async def test_a_resumable_run_whose_engine_dies_goes_on_in_the_same_view(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    text = "on_orphan: resume\n" + template("Survivor", 5, "{tokens: 12, token_delay_ms: 80}")
    await create_from_page(page, text)
    await expect(page.locator(".settings-list")).to_contain_text("another engine resumes the run")
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "running")
    run_id = await shown_run_id(page)
    await expect(page.locator('.pill[data-status="completed"]')).to_have_count(2, timeout=20_000)

    stack.kill("engine")  # mid-run: the lease lapses, the sweeper requeues, a new engine adopts
    stack.start("engine")

    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=30_000)
    assert await shown_run_id(page) == run_id  # the same run, followed on the same stream
    await expect(page.locator("#run-line")).to_contain_text("handed to another engine once")
    await expect(page.locator('.pill[data-status="completed"]')).to_have_count(5)
    run = await get_run(http, stack, run_id)
    assert (run["status"], run["requeues"]) == ("completed", 1)
    events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    assert [e.event for e in events].count(ev.RUN_REQUEUED) == 1
    await page.screenshot(path=str(ARTIFACTS / "handed-over.png"), full_page=True)


async def test_a_truncated_step_is_retried_with_twice_its_limit(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow_id = await create_from_page(
        page,
        "name: Cut short\nsteps:\n  - name: Long\n    max_tokens: 16\n    params: {tokens: 30}\n",
    )
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=20_000)
    (step,) = (await get_run(http, stack, await shown_run_id(page)))["steps"]
    shown = page.locator(f"#step-{step['id']}")
    await expect(shown.locator(".badge.truncated")).to_be_visible()

    await page.locator(f".pill[data-step-id='{step['id']}']").click()
    await shown.get_by_role("button", name="Retry with 32 tokens").click()
    runs = await finished_run(http, stack, workflow_id, 2)
    assert runs[0]["status"] == "completed"
    await expect(detail).to_have_attribute("data-run-id", runs[0]["id"])
    await expect(shown.locator(".badge.truncated")).to_be_hidden()
    await expect(
        shown.get_by_role("button", name=re.compile(r"Retry with \d+ tokens"))
    ).to_have_count(0)
    done = (await get_run(http, stack, runs[0]["id"]))["steps"][0]
    assert (done["max_tokens"], done["truncated"], done["output_tokens"]) == (32, False, 30)


async def test_a_step_cut_by_a_full_context_window_offers_no_larger_limit(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Twice the tokens meets the same full window: the page offered it, the retry was cut
    again, and the step said "max_tokens" where the model's window was the limit."""
    await create_from_page(
        page,
        "name: Window\nsteps:\n  - name: Long\n    max_tokens: 16\n"
        "    params: {tokens: 30, context_tokens: 10}\n",
    )
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=20_000)
    (step,) = (await get_run(http, stack, await shown_run_id(page)))["steps"]
    assert (step["finish_reason"], step["truncated"], step["output_tokens"]) == (
        "context_window",
        True,
        10,
    )
    shown = page.locator(f"#step-{step['id']}")
    badge = shown.locator(".badge.truncated").first
    await expect(badge).to_be_visible()
    await expect(badge).to_have_attribute("title", re.compile("context window is full"))

    await page.locator(f".pill[data-step-id='{step['id']}']").click()
    await expect(shown.get_by_role("button", name="Retry step")).to_be_visible()
    await expect(shown.locator("dd", has_text="context window full (truncated)")).to_be_visible()
    await expect(
        shown.get_by_role("button", name=re.compile(r"Retry with \d+ tokens"))
    ).to_have_count(0)


SLOW_FAN_OUT = """name: Slow items
steps:
  - name: Topics
    params: {items: 8, tokens: 4}
  - name: Each
    kind: fan_out
    source: Topics
    split: headings
    concurrency: 1
    prompt: "{{ item }}"
    params: {tokens: 6, token_delay_ms: 100}
"""


async def test_a_resumed_fan_out_keeps_showing_the_items_it_had_finished(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    await start_from_page(page, SLOW_FAN_OUT)
    detail = page.locator(".detail")
    await expect(page.locator(".step .item").nth(2)).to_be_attached(timeout=20_000)
    await page.get_by_role("button", name="Pause").click()
    await expect(detail).to_have_attribute("data-run-status", "paused", timeout=20_000)
    fan_out = (await get_run(http, stack, await shown_run_id(page)))["steps"][1]
    finished = len(fan_out["items"])
    assert fan_out["status"] != "completed" and 3 <= finished < 8, fan_out["status"]
    fan = page.locator(f"#step-{fan_out['id']}")
    await expect(fan.locator(".item")).to_have_count(finished)
    await page.evaluate(
        """(id) => {
          const box = document.querySelector(`#step-${id} .fanout`);
          const shown = () => (box.hidden ? 0 : box.querySelectorAll(".item").length);
          window.fewestItems = shown();
          const note = () => { window.fewestItems = Math.min(window.fewestItems, shown()); };
          const what = { subtree: true, childList: true, attributes: true };
          new MutationObserver(note).observe(box, what);
        }""",
        fan_out["id"],
    )

    await page.get_by_role("button", name="Resume").click()
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=20_000)
    await expect(fan.locator(".fanout-count")).to_have_text("8/8")
    assert await page.evaluate("() => window.fewestItems") == finished


FAN_OUT_CUT = """name: Items cut short
steps:
  - name: Topics
    params: {items: 3, tokens: 30}
  - name: Each
    kind: fan_out
    source: Topics
    prompt: "{{ item }}"
    max_tokens: 3
    params: {tokens: 5, replies: {"Item 2:": "an answer far too long for the limit", "Item": "ok"}}
"""


async def test_a_fan_out_item_cut_at_its_limit_is_marked(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    await start_from_page(page, FAN_OUT_CUT)
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=20_000)
    fan_out = (await get_run(http, stack, await shown_run_id(page)))["steps"][1]
    assert [i["truncated"] for i in fan_out["items"]] == [False, True, False]
    items = page.locator(f"#step-{fan_out['id']} .item")
    await expect(items).to_have_count(3)
    for index, cut in enumerate((False, True, False)):
        badge = items.nth(index).locator(".item-heading .badge.truncated")
        await expect(badge).to_have_count(1 if cut else 0)
    await page.reload()  # from the stored items, not the live events
    await expect(detail).to_have_attribute("data-run-status", "completed")
    await expect(page.locator(f"#step-{fan_out['id']} .item .badge.truncated")).to_have_count(1)


async def test_a_fan_out_item_being_read_stays_as_it_is_while_the_others_arrive(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    await start_from_page(page, SLOW_FAN_OUT)
    first = page.locator(".step .item[data-index='0'] .item-output")
    await expect(first).not_to_have_text("Done; loading…", timeout=20_000)
    fan_out = (await get_run(http, stack, await shown_run_id(page)))["steps"][1]
    fan = page.locator(f"#step-{fan_out['id']}")
    count = fan.locator(".fanout-count")
    assert int((await count.text_content() or "0/").split("/")[0]) < 4, "too fast to watch"
    await page.locator(f".pill[data-step-id='{fan_out['id']}']").click()  # opens the step
    await expect(fan).to_have_js_property("open", True)
    read = await page.evaluate(
        """(id) => {
          const item = document.querySelector(`#step-${id} .item[data-index='0']`);
          item.dataset.probe = "1";
          window.readItem = item;
          getSelection().selectAllChildren(item.querySelector(".item-output"));
          return getSelection().toString();
        }""",
        fan_out["id"],
    )
    assert read.strip()

    five_or_more = re.compile(r"^[5-8]/8$")  # a frame may show more than one more
    await expect(count).to_have_text(five_or_more, timeout=20_000)
    kept = await page.evaluate(
        """() => [window.readItem.isConnected, window.readItem.dataset.probe,
                  window.readItem.querySelector(".item-output").textContent,
                  getSelection().toString()]"""
    )
    assert kept[:2] == [True, "1"], "the item being read was replaced"
    assert kept[2:] == [read, read]

    await expect(page.locator(".detail")).to_have_attribute(
        "data-run-status", "completed", timeout=20_000
    )
    await expect(count).to_have_text("8/8")
    items = (await get_run(http, stack, await shown_run_id(page)))["steps"][1]["items"]
    shown = fan.locator(".item")
    await expect(shown).to_have_count(8)
    assert [await shown.nth(i).get_attribute("data-index") for i in range(8)] == [
        str(i) for i in range(8)
    ]
    await expect(shown.locator(".item-output")).to_have_text([words(i["output"]) for i in items])
    assert await page.evaluate("() => window.readItem === document.querySelector('.item')")


MANY_ITEMS = 80
MANY_ITEMS_FAN_OUT = f"""name: Many items
steps:
  - name: Topics
    params: {{items: {MANY_ITEMS}, tokens: 4}}
  - name: Each
    kind: fan_out
    source: Topics
    split: headings
    concurrency: 4
    prompt: "{{{{ item }}}}"
    params: {{tokens: 100, token_delay_ms: 4}}
"""


async def test_a_fan_out_fetches_only_its_new_items_not_the_whole_run_per_item(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Each finished item's event once made the page read the whole run again (every step,
    every item's output) four times a second; now it reads only the items it lacks, each
    once, batched, and the whole run at the run's start and end."""
    await create_from_page(page, MANY_ITEMS_FAN_OUT)
    whole: list[int] = []  # response bytes of each read of the whole run
    fetched: list[int] = []  # the indexes the items' reads brought
    item_bytes: list[int] = []
    workflow_reads: list[str] = []  # the query of each read of the workflow after the start
    reads: list[asyncio.Future[None]] = []

    async def note(response: Response) -> None:
        path = response.url.removeprefix(stack.base_url)
        if response.request.method == "GET" and (found := WORKFLOW_URL.search(path)):
            workflow_reads.append(found.group(1) or "")
        if response.request.method != "GET" or not (RUN_URL.search(path) or ITEMS_URL.search(path)):
            return
        body = await response.body()
        if ITEMS_URL.search(path):
            item_bytes.append(len(body))
            fetched.extend(i["index"] for i in json.loads(body)["items"])
        else:
            whole.append(len(body))

    await page.get_by_role("button", name="Start", exact=True).click()
    page.on("response", lambda response: reads.append(asyncio.ensure_future(note(response))))
    workflow_id = page.url.rsplit("/", 1)[1]
    # A second tab opened mid-fan-out: the items so far from the run, the rest as they finish.
    await expect(page.locator(".fanout-count")).to_have_text(re.compile(r"^[1-9]\d*/"))
    late = await page.context.new_page()
    await late.goto(stack.base_url + "/")
    await late.get_by_label("API key").fill(API_KEY)
    await late.get_by_role("button", name="Sign in").click()
    await open_workflow(late, workflow_id, "Many items")
    started = int((await late.locator(".fanout-count").text_content() or "0/").split("/")[0])
    assert started < MANY_ITEMS, "too fast to open mid-fan-out"

    for tab in (page, late):
        detail = tab.locator(".detail")
        await expect(detail).to_have_attribute("data-run-status", "completed", timeout=30_000)
        fan_out = (await get_run(http, stack, await shown_run_id(tab)))["steps"][1]
        fan = tab.locator(f"#step-{fan_out['id']}")
        await expect(fan.locator(".fanout-count")).to_have_text(f"{MANY_ITEMS}/{MANY_ITEMS}")
        shown = fan.locator(".item-output")
        await expect(shown).to_have_count(MANY_ITEMS)
        await expect(shown).to_have_text([words(i["output"]) for i in fan_out["items"]])
    await asyncio.gather(*reads)

    assert len(whole) <= 3, f"the whole run was read {len(whole)} times"  # start, end
    # The workflow is read again at the run's end, without the results the run brings.
    assert workflow_reads and set(workflow_reads) == {"?brief=true"}, workflow_reads
    assert sorted(fetched) == sorted(set(fetched)), "an item was fetched twice"
    assert 0 < len(item_bytes) < MANY_ITEMS / 2, "items were not fetched in batches"


TIMED = """async (source) => {
  const { renderMarkdown } = await import("/static/markdown.js");
  const started = performance.now();
  const html = renderMarkdown(source);
  return [performance.now() - started, html.replace(/ +/g, " ")];
}"""
BLANKS = " " * 100_000


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        (f"## One{BLANKS}note\n\nbody\n", "<h4>One note</h4>"),
        (f"```{BLANKS}a b\n", "<p>``` a b</p>"),
        (f"- x{BLANKS}\r y\n", "<ul><li>x \r y</li></ul>"),
    ],
    ids=["heading", "fence", "list item"],
)
async def test_a_long_run_of_blanks_is_rendered_without_freezing_the_page(
    page: Page, source: str, shown: str
) -> None:
    """Patterns that read a line's end read a long run of blanks once per character before
    it: a 120 KB output held the tab 11 s, and 100 KB here took seconds; now about a millisecond."""
    took_ms, html = await page.evaluate(TIMED, source)
    assert html.startswith(shown), html[:200]
    assert took_ms < 1000, f"rendering held the page {took_ms:.0f} ms"

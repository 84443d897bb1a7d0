"""The page's cost and its news while it follows a run: a delta renders only the text it adds
and the open block, an event redraws only what it changed, a fallback note is read back with
the run, a lost connection is said, and a run started elsewhere is followed."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.async_api import Page, Response, expect

from tests.browser.test_page import open_workflow, shown_run_id, text_of, words
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events

RENDERS_AS_A_WHOLE = """async (stepId) => {
  const { renderMarkdown } = await import("/static/markdown.js");
  const output = document.querySelector(`#step-${stepId} .output`);
  return output.innerHTML === renderMarkdown(window.nyxflow.detail.streamed[stepId]);
}"""


def one_step(name: str, **params: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "kind": "llm",
            "prompt": name,
            "provider": "local",
            "max_tokens": 16000,
            "params": params,
        }
    ]


async def ends_as_rendered_whole(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack, step_id: str
) -> None:
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=60_000)
    run = await get_run(http, stack, await shown_run_id(page))
    (step,) = run["steps"]
    streamed = await page.evaluate("() => window.nyxflow.detail.streamed")
    assert streamed[step_id] == step["output"]
    assert await page.evaluate(RENDERS_AS_A_WHOLE, step_id), "not the whole text's markdown"
    assert await text_of(page, f"#step-{step_id} .output") == words(step["output"])


async def test_a_delta_leaves_the_finished_blocks_of_the_output_as_they_were(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Each delta rendered the whole output again (innerHTML of all of it): quadratic, 13 s of
    a 37 s run at 30,000 tokens. The blocks before the last blank line are rendered once."""
    workflow = await create_workflow(
        http, stack, "Blocks", one_step("Blocks", items=40, tokens=400, token_delay_ms=10)
    )
    (step,) = workflow["steps"]
    await open_workflow(page, workflow["id"], "Blocks")
    await page.get_by_role("button", name="Start", exact=True).click()
    await page.wait_for_function(
        """(stepId) => {
          const output = document.querySelector(`#step-${stepId} .output`);
          if (output.querySelectorAll("h4").length < 4) return false;
          // The last heading's block may be open yet.
          window.finished = [...output.children].slice(0, -3);
          window.removed = [];
          new MutationObserver((records) => {
            for (const r of records) window.removed.push(...r.removedNodes);
          }).observe(output, { childList: true, subtree: true, characterData: true });
          return true;
        }""",
        arg=step["id"],
        timeout=20_000,
    )
    await ends_as_rendered_whole(page, http, stack, step["id"])
    assert await page.evaluate("() => window.finished.length") >= 3
    assert await page.evaluate("() => window.removed.length") > 0, "nothing was streamed"
    assert await page.evaluate(
        """(stepId) => {
          const output = document.querySelector(`#step-${stepId} .output`);
          return window.finished.every((el) => el.parentNode === output)
            && !window.removed.some((node) => window.finished.includes(node));
        }""",
        step["id"],
    ), "a finished block was rendered again"


async def test_a_long_paragraph_is_not_rendered_again_at_each_delta(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """One open block (no blank line): past a few KB its streamed text is appended as text and
    the block rendered again only when it has doubled, and at the step's end."""
    workflow = await create_workflow(
        http, stack, "Paragraph", one_step("Paragraph", tokens=3000, token_delay_ms=3)
    )
    (step,) = workflow["steps"]
    await open_workflow(page, workflow["id"], "Paragraph")
    await page.get_by_role("button", name="Start", exact=True).click()
    await page.wait_for_function(
        """(stepId) => {
          const output = document.querySelector(`#step-${stepId} .output`);
          if (output.textContent.length < 9000) return false;
          window.renders = 0;
          window.appends = 0;
          new MutationObserver((records) => {
            for (const r of records) {
              if (r.removedNodes.length) window.renders += 1;
              else window.appends += 1;
            }
          }).observe(output, { childList: true, subtree: true, characterData: true });
          return true;
        }""",
        arg=step["id"],
        timeout=30_000,
    )
    await ends_as_rendered_whole(page, http, stack, step["id"])
    seen = await page.evaluate("() => window.appends + window.renders")
    assert seen >= 5, "the run ended before it was seen"
    # Rendered again once it doubled (9 KB → 18 KB at most twice) and at its end.
    assert await page.evaluate("() => window.renders") <= 3


async def test_a_streamed_view_renders_as_the_whole_text_does(page: Page) -> None:
    """The view fed a text piece by piece shows what renderMarkdown gives for all of it, code
    fences holding blank lines included, and starts again on a text that does not go on."""
    same = await page.evaluate(
        """async () => {
          const { MarkdownView, renderMarkdown } = await import("/static/markdown.js");
          const parts = ["# Title", "para *one*\\nstill one", "", "- a\\n- b", "",
            "```js\\nlet x = 1;\\n\\n\\nlet y = 2;\\n```", "", "3. three\\n4. four", "",
            "x".repeat(5000) + " **y**\\nmore", "", "## Done #", "after", "cr\\r\\n\\r\\nlf"];
          let seed = 7;
          const random = () => {
            seed = (seed * 48271) % 2147483647;
            return seed / 2147483647;
          };
          const pick = () => parts[Math.floor(random() * parts.length)];
          const results = [];
          for (let round = 0; round < 20; round += 1) {
            const text = Array.from({ length: 30 }, pick).join("\\n");
            const el = document.createElement("div");
            const view = new MarkdownView(el);
            view.show("void", false);
            for (let at = 1; at <= text.length; at += 1 + Math.floor(random() * 300)) {
              view.show(text.slice(0, at), false);
            }
            view.show(text, true);
            results.push(el.innerHTML === renderMarkdown(text));
          }
          return results;
        }"""
    )
    assert all(same), same


WATCH_FINISHED_STEPS = """() => {
  const detail = document.querySelector(".detail");
  const finished = new Set(); // steps completed as of the previous batch of changes
  window.touched = []; // [step id, what changed] of a completed step while the run went on
  window.batches = 0;
  new MutationObserver((records) => {
    window.batches += 1;
    const running = ["pending", "running"].includes(detail.dataset.runStatus);
    for (const r of records) {
      const target = r.target.nodeType === Node.ELEMENT_NODE ? r.target : r.target.parentElement;
      const id = target.closest("[data-step-id]")?.dataset.stepId;
      if (running && id && finished.has(id)) window.touched.push([id, r.type, r.attributeName]);
    }
    for (const step of document.querySelectorAll(".step[data-status=completed]")) {
      finished.add(step.dataset.stepId);
    }
  }).observe(detail, { subtree: true, childList: true, attributes: true, characterData: true });
}"""


async def test_an_event_of_one_step_leaves_the_other_steps_as_they_were(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Each step_started or step_completed redrew the head, which marked every step dirty, and
    each step's DOM was written again whether it changed or not: a run of 100 steps made 174
    long tasks. A finished step is now left alone while the others run."""
    many = [one_step(f"s{i}", tokens=4, token_delay_ms=15)[0] for i in range(25)]
    workflow = await create_workflow(http, stack, "Many", many)
    await open_workflow(page, workflow["id"], "Many")
    await page.evaluate(WATCH_FINISHED_STEPS)
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=60_000)
    await expect(page.locator(".step[data-status=completed]")).to_have_count(25)
    assert await page.evaluate("() => window.batches") > 10, "the run was not seen going"
    touched = await page.evaluate("() => window.touched")
    assert not touched, f"finished steps written again while the run went on: {touched[:5]}"


async def test_a_finished_run_opened_afresh_shows_its_fallback_notes(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """The "Fell back from X to Y" note came only from a live provider_fallback event: a
    finished run opened afresh (a reload) showed none. It is read from the stored events."""
    chain = {"name": "Fallback", "kind": "llm", "prompt": "p", "params": {"tokens": 8}}
    workflow = await create_workflow(
        http,
        stack,
        "Fallback",
        [
            {**chain, "providers": ["openai:gpt-4.1", "local"]},
            {**chain, "name": "Plain", "provider": "local"},
        ],
    )
    first, plain = workflow["steps"]
    run_id = await start_run(http, stack, workflow["id"])
    events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    assert [e.event for e in events].count("provider_fallback") == 1
    assert "step_delta" in {e.event for e in events}
    # What the page reads of the stored events: the notes' events only, never every delta.
    read: list[str] = []

    async def stored_read(response: Response) -> None:
        if "/events/stored" in response.url:
            read.extend(e["type"] for e in (await response.json())["events"])

    page.on("response", stored_read)
    await open_workflow(page, workflow["id"], "Fallback")
    await expect(page.locator(".detail")).to_have_attribute("data-run-status", "completed")
    notes = page.locator(f"#step-{first['id']} .notes li")
    await expect(notes).to_have_count(1)
    await expect(notes).to_have_text(re.compile(r"^Fell back from openai(:\S+)? to local: "))
    await expect(page.locator(f"#step-{plain['id']} .notes")).to_be_hidden()
    await page.reload()
    await expect(notes).to_have_count(1)
    assert read and set(read) == {"step_started", "provider_fallback"}, read


async def test_a_lost_connection_is_said_until_a_read_succeeds_again(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """With its gateway gone, the page went on saying "· live" or "· refreshing every 3 s",
    its failed reads ignored. It says since when it has had no answer, until it has one."""
    workflow = await create_workflow(
        http, stack, "Offline", one_step("Offline", tokens=600, token_delay_ms=40)
    )
    await open_workflow(page, workflow["id"], "Offline")
    await page.get_by_role("button", name="Start", exact=True).click()
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-live", "sse")
    await page.wait_for_function("() => window.nyxflow.detail.lastSeq > 5")
    connection, run_line = page.locator("#connection"), page.locator("#run-line")
    await expect(connection).to_be_hidden()

    stack.kill("gateway")
    try:
        await expect(connection).to_be_visible(timeout=30_000)
        lost = re.compile(r"^Connection lost; retrying since \d\d:\d\d:\d\d\.$")
        await expect(connection).to_have_text(lost)
        await expect(run_line).to_contain_text("connection lost")
        await expect(run_line).not_to_contain_text("live")
    finally:
        stack.start("gateway")
    await expect(connection).to_be_hidden(timeout=30_000)
    await expect(run_line).not_to_contain_text("connection lost")
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=60_000)
    await expect(connection).to_be_hidden()


async def test_a_run_started_elsewhere_is_followed(
    page: Page, http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """A page showing a workflow with no run on followed only a run it found on loading; one
    started from another tab or the CLI went unseen until a reload."""
    workflow = await create_workflow(http, stack, "Elsewhere", one_step("Elsewhere", tokens=30))
    await open_workflow(page, workflow["id"], "Elsewhere")
    await expect(page.locator("#run-line")).to_have_text("Never run")
    run_id = await start_run(http, stack, workflow["id"])
    detail = page.locator(".detail")
    await expect(detail).to_have_attribute("data-run-id", run_id, timeout=15_000)
    await expect(detail).to_have_attribute("data-run-status", "completed", timeout=30_000)
    run = await get_run(http, stack, run_id)
    (step,) = run["steps"]
    assert await text_of(page, f"#step-{step['id']} .output") == words(step["output"])

    rerun = await http.post(f"/v1/workflows/{workflow['id']}/rerun", headers=stack.headers)
    assert rerun.status_code in (200, 201), rerun.text
    again = rerun.json()["id"]  # the tab comes back in view: it reads the workflow at once
    await page.evaluate("() => window.dispatchEvent(new Event('focus'))")
    await expect(detail).to_have_attribute("data-run-id", again, timeout=3_000)

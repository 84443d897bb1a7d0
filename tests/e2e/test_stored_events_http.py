"""GET /v1/runs/{run_id}/events/stored over the real process stack: what a page without an
event stream polls, the events after the last one it applied, as the stream has them; an
active run's answer comes at once (its live tail is never waited for); bad input is a 400
naming its field, a wrong id 404 (another tenant's: test_tenant_walls_http)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from nyxflow import events as ev
from tests.support.gateway_api import create_workflow, get_run, start_run, steps
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events


def stored_url(run_id: str) -> str:
    return f"/v1/runs/{run_id}/events/stored"


async def stored(
    http: httpx.AsyncClient, stack: ProcessStack, run_id: str, **params: Any
) -> dict[str, Any]:
    response = await http.get(stored_url(run_id), params=params, headers=stack.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_finished_runs_events_after_a_seq_are_the_streams(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "stored", steps(2, tokens=6))
    run_id = await start_run(http, stack, workflow["id"])
    streamed = [f.json for f in await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)]
    last = streamed[-1]["seq"]
    assert streamed[-1]["type"] == ev.RUN_COMPLETED

    whole = await stored(http, stack, run_id)
    assert whole == {
        "status": ev.COMPLETED,
        "error": None,
        "last_seq": last,
        "read_through": last,
        "events": streamed,
    }
    assert (await stored(http, stack, run_id, after_seq=3))["events"] == streamed[3:]
    assert (await stored(http, stack, run_id, after_seq=3, limit=2))["events"] == streamed[3:5]
    for after in (last, last + 5):
        assert (await stored(http, stack, run_id, after_seq=after))["events"] == []


async def test_an_active_run_is_read_up_to_its_last_event_at_once(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Polled as the page polls: each answer at once, the events gap-free and once each, to
    the terminal one, the same as the stream's."""
    workflow = await create_workflow(http, stack, "polled", steps(3, tokens=12, token_delay_ms=40))
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers, limit=1)  # starts it
    polled: list[dict[str, Any]] = []
    statuses: set[str] = set()
    answer: dict[str, Any] = {"status": ev.RUNNING}
    while answer["status"] in ev.ACTIVE_RUN_STATUSES or polled[-1]["seq"] < answer["last_seq"]:
        after = polled[-1]["seq"] if polled else 0
        began = time.monotonic()
        answer = await stored(http, stack, run_id, after_seq=after)
        assert time.monotonic() - began < 2, "the read waited for the live tail"
        statuses.add(answer["status"])
        polled += answer["events"]
        assert not polled or polled[-1]["seq"] <= answer["last_seq"]
        await asyncio.sleep(0.2)

    assert ev.RUNNING in statuses, "the run ended before it was polled"
    assert [e["seq"] for e in polled] == list(range(1, len(polled) + 1))
    assert polled[-1]["type"] == ev.RUN_COMPLETED
    streamed = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    assert [f.json for f in streamed] == polled
    assert (await get_run(http, stack, run_id))["last_seq"] == len(polled)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after_seq": -1}, "after_seq"),
        ({"after_seq": "x"}, "after_seq"),
        ({"after_seq": 10**18}, "after_seq"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"types": "provider_fallback,no_such_event"}, "types"),
        ({"types": ","}, "types"),
    ],
)
async def test_bad_input_is_a_400_naming_its_field(
    http: httpx.AsyncClient, stack: ProcessStack, params: dict[str, Any], field: str
) -> None:
    workflow = await create_workflow(http, stack, "bad", steps(1, tokens=2))
    run_id = await start_run(http, stack, workflow["id"])
    response = await http.get(stored_url(run_id), params=params, headers=stack.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    assert (await get_run(http, stack, run_id))["status"] == ev.PENDING, "it started the run"


async def test_an_unknown_run_is_404_and_no_key_401(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    missing = stored_url("00000000-0000-0000-0000-000000000000")
    response = await http.get(missing, headers=stack.headers)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert (await http.get(missing)).status_code == 401


async def test_events_of_some_types_are_read_without_the_rest(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """What the page reads for a finished run's fallback notes: its provider_fallback and
    step_started events only, page by page to the run's last seq, none of its deltas."""
    llm = {"kind": "llm", "prompt": "p", "params": {"tokens": 30}}
    workflow = await create_workflow(
        http,
        stack,
        "typed",
        [
            {**llm, "name": "a", "providers": ["openai:gpt-4.1", "local"]},
            {**llm, "name": "b", "provider": "local"},
            {**llm, "name": "c", "providers": ["openai:gpt-4.1", "local"]},
        ],
    )
    run_id = await start_run(http, stack, workflow["id"])
    streamed = [f.json for f in await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)]
    wanted = {ev.PROVIDER_FALLBACK, ev.STEP_STARTED}
    expected = [e for e in streamed if e["type"] in wanted]
    assert [e["type"] for e in expected].count(ev.PROVIDER_FALLBACK) == 2
    assert ev.STEP_DELTA in {e["type"] for e in streamed}

    whole = await stored(http, stack, run_id, types="provider_fallback,step_started")
    assert whole["events"] == expected
    assert whole["read_through"] == whole["last_seq"] == streamed[-1]["seq"]

    paged: list[dict[str, Any]] = []
    after, calls = 0, 0
    while after < streamed[-1]["seq"]:
        page = await stored(
            http,
            stack,
            run_id,
            after_seq=after,
            limit=1,
            types=["provider_fallback", "step_started"],
        )
        assert len(page["events"]) <= 1 and page["read_through"] > after
        paged += page["events"]
        after, calls = page["read_through"], calls + 1
    assert paged == expected and calls == len(expected)  # the last one reads to the end
    none = await stored(http, stack, run_id, types="run_cancelled")
    assert none["events"] == [] and none["read_through"] == streamed[-1]["seq"]

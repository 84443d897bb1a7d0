"""Browser → gateway → engine → runs → database, over real processes, HTTP and SSE."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from nyxflow import events as ev
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, get_run, start_run, steps
from tests.support.processes import ProcessStack
from tests.support.sse_client import frames, read_events


def events_url(run_id: str) -> str:
    return f"/v1/runs/{run_id}/events"


async def test_connect_streams_every_event_in_order_and_database_matches(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "e2e", steps(3, tokens=16, token_delay_ms=2))
    run_id = await start_run(http, stack, workflow["id"])

    async with http.stream("GET", events_url(run_id), headers=stack.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        received = [f async for f in frames(response)]

    assert received[0].retry == 3000
    events = [f for f in received if f.event is not None]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].event == ev.RUN_STARTED and events[-1].event == ev.RUN_COMPLETED
    assert all(e.data is not None and e.json["seq"] == e.seq for e in events)
    run = await get_run(http, stack, run_id)
    assert run["status"] == "completed"
    outputs = [e.json["output"] for e in events if e.event == ev.STEP_COMPLETED]
    assert outputs == [s["output"] for s in run["steps"]]
    assert [s["status"] for s in run["steps"]] == ["completed"] * 3


async def test_reconnect_with_last_event_id_resumes_without_duplicates_or_restart(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(
        http, stack, "reconnect", steps(4, tokens=20, token_delay_ms=15)
    )
    run_id = await start_run(http, stack, workflow["id"])

    first = await read_events(http, events_url(run_id), stack.headers, limit=4)
    last_id = first[-1].seq
    headers = {**stack.headers, "Last-Event-ID": str(last_id)}
    rest = await read_events(http, events_url(run_id), headers)

    seqs = [f.seq for f in first + rest]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate"
    assert rest[-1].event == ev.RUN_COMPLETED
    everything = await read_events(http, events_url(run_id), stack.headers)
    assert Counter(f.event for f in everything)[ev.RUN_STARTED] == 1
    assert [f.seq for f in everything] == seqs


async def test_query_last_event_id_is_honoured(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "query", steps(1, tokens=4))
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, events_url(run_id), stack.headers)
    tail = await read_events(http, f"{events_url(run_id)}?last_event_id=3", stack.headers)
    assert tail[0].seq == 4 and tail[-1].event == ev.RUN_COMPLETED


async def test_a_last_event_id_past_the_runs_end_goes_on_from_its_end_and_closes(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """The stream never ended: every event was at or below the id, the terminal one too, and
    the page showed the run running for ever."""
    workflow = await create_workflow(http, stack, "beyond", steps(2, tokens=20, token_delay_ms=50))
    run_id = await start_run(http, stack, workflow["id"])
    first = await read_events(http, events_url(run_id), stack.headers, limit=2)
    headers = {**stack.headers, "Last-Event-ID": "1000"}

    rest = await asyncio.wait_for(read_events(http, events_url(run_id), headers), 30)

    assert rest[-1].event == ev.RUN_COMPLETED
    seqs = [f.seq for f in rest]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] > first[-1].seq
    done = await http.get(events_url(run_id), headers=headers)  # finished: nothing more
    assert done.status_code == 204 and done.content == b""


async def finish(http: httpx.AsyncClient, stack: ProcessStack, how: str) -> dict[str, Any]:
    """A run ended one way: run to its end (completed or failed), or stopped while pending."""
    spec = steps(2, tokens=4)
    if how == ev.FAILED:
        spec[1]["params"] = {"fail": "provider said no"}
    workflow = await create_workflow(http, stack, f"ended {how}", spec)
    run_id = await start_run(http, stack, workflow["id"])
    if how in (ev.PAUSED, ev.CANCELLED):
        action = "pause" if how == ev.PAUSED else "cancel"
        response = await http.post(f"/v1/runs/{run_id}/{action}", headers=stack.headers)
        assert response.status_code == 200, response.text
    else:
        await read_events(http, events_url(run_id), stack.headers)
    run = await get_run(http, stack, run_id)
    assert run["status"] == how and run["last_seq"] > 0
    return run


@pytest.mark.parametrize("how", [ev.COMPLETED, ev.FAILED, ev.CANCELLED, ev.PAUSED])
async def test_a_finished_run_followed_from_its_last_event_answers_204(
    http: httpx.AsyncClient, stack: ProcessStack, how: str
) -> None:
    """An empty 200 that closed at once: EventSource reconnected every 3 s, for ever. A 204
    is what makes it stop; a stream with events to replay is still a 200 that ends."""
    run = await finish(http, stack, how)
    url, last = events_url(run["id"]), run["last_seq"]

    for after in (str(last), str(last + 1), "999999999999999999"):
        header = await http.get(url, headers={**stack.headers, "Last-Event-ID": after})
        query = await http.get(url, params={"last_event_id": after}, headers=stack.headers)
        for response in (header, query):
            assert response.status_code == 204, (after, response.text)
            assert response.content == b""

    tail = await read_events(http, url, {**stack.headers, "Last-Event-ID": str(last - 1)})
    assert [f.seq for f in tail] == [last]
    assert tail[0].event == ev.TERMINAL_EVENT_FOR_STATUS[how]
    assert [f.seq for f in await read_events(http, url, stack.headers)] == list(range(1, last + 1))
    assert await get_run(http, stack, run["id"]) == run, "following it changed the run"


async def test_a_key_in_the_query_stays_out_of_the_gateways_log(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """The page's EventSource sends its key as ?access_token=, and the access log wrote every
    such URL whole: anyone with the logs had the tenant's key."""
    workflow = await create_workflow(http, stack, "query key", steps(1, tokens=3))
    run_id = await start_run(http, stack, workflow["id"])
    key = stack.headers["Authorization"].removeprefix("Bearer ")

    events = await read_events(http, f"{events_url(run_id)}?access_token={key}", {})

    assert events[-1].event == ev.RUN_COMPLETED
    logged = stack.log_text("gateway")
    assert f"/v1/runs/{run_id}/events?access_token=***" in logged
    assert key not in logged


async def test_fifty_concurrent_connects_start_the_run_once(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "stampede", steps(2, tokens=30, token_delay_ms=5))
    run_id = await start_run(http, stack, workflow["id"])

    streams = await asyncio.gather(
        *(read_events(http, events_url(run_id), stack.headers) for _ in range(50))
    )

    reference = [(f.seq, f.event, f.data) for f in streams[0]]
    assert reference[-1][1] == ev.RUN_COMPLETED
    assert [seq for seq, _, _ in reference] == list(range(1, len(reference) + 1))
    for stream in streams:
        assert [(f.seq, f.event, f.data) for f in stream] == reference
    assert [event for _, event, _ in reference].count(ev.RUN_STARTED) == 1


async def test_reconnect_to_completed_run_replays_and_executes_nothing(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "done", steps(2, tokens=8))
    run_id = await start_run(http, stack, workflow["id"])
    original = await read_events(http, events_url(run_id), stack.headers)
    before = await get_run(http, stack, run_id)

    replay = await read_events(http, events_url(run_id), stack.headers)

    assert [(f.seq, f.data) for f in replay] == [(f.seq, f.data) for f in original]
    after = await get_run(http, stack, run_id)
    assert after == before


async def test_step_exception_fails_run_and_step_in_the_database(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    spec = steps(2, tokens=4)
    spec[1]["params"] = {"fail": "provider said no"}
    workflow = await create_workflow(http, stack, "fails", spec)
    run_id = await start_run(http, stack, workflow["id"])

    events = await read_events(http, events_url(run_id), stack.headers)

    assert events[-1].event == ev.RUN_FAILED
    run = await get_run(http, stack, run_id)
    assert run["status"] == "failed" and "provider said no" in run["error"]
    assert [s["status"] for s in run["steps"]] == ["completed", "failed"]
    assert run["steps"][1]["error"] == "provider said no"


async def test_errors_are_clear_and_never_restart(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    response = await http.get(events_url(missing), headers=stack.headers)
    assert response.status_code == 404 and response.json()["error"]["code"]
    assert (await http.get(events_url(missing))).status_code == 401

    workflow = await create_workflow(http, stack, "bad-id", steps(1, tokens=4))
    run_id = await start_run(http, stack, workflow["id"])
    bad = await http.get(events_url(run_id), headers={**stack.headers, "Last-Event-ID": "x1"})
    assert bad.status_code == 400
    assert (await get_run(http, stack, run_id))["status"] == "pending"

    conflict = await http.post(f"/v1/workflows/{workflow['id']}/runs", headers=stack.headers)
    assert conflict.status_code == 409

    invalid = await http.post(
        "/v1/workflows",
        json={"name": "x", "steps": [{"name": "a", "kind": "nope"}]},
        headers=stack.headers,
    )
    assert invalid.status_code == 400 and invalid.json()["error"]["field"] == "steps[0].kind"


async def test_closed_tab_releases_upstream_and_run_goes_on(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    async def upstreams() -> int:
        response = await http.get("/v1/debug/streams", headers=stack.headers)
        return int(response.json()["upstream_streams"])

    baseline = await upstreams()
    workflow = await create_workflow(http, stack, "tab", steps(3, tokens=40, token_delay_ms=20))
    run_id = await start_run(http, stack, workflow["id"])
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as tab:
        await read_events(tab, events_url(run_id), stack.headers, limit=3)
    # the tab is closed: its upstream stream goes, the run does not
    await eventually(upstreams, lambda n: n <= baseline, timeout_s=10, what="upstream released")
    run = await eventually(
        lambda: get_run(http, stack, run_id),
        lambda r: r["status"] != "running",
        timeout_s=20,
        what="run finished",
    )
    assert run["status"] == "completed"

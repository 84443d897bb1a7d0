"""Engines that die or freeze: the sweeper fails their runs, and a zombie writes nothing."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from nyxflow import events as ev
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, get_run, start_run, steps
from tests.support.processes import LEASE_TTL_S, ProcessStack
from tests.support.sse_client import frames, read_events


async def _start_long_run(http: httpx.AsyncClient, stack: ProcessStack, name: str) -> str:
    workflow = await create_workflow(http, stack, name, steps(3, tokens=200, token_delay_ms=20))
    run_id = await start_run(http, stack, workflow["id"])
    # Connect, see it running, then leave: the run goes on in the engine.
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers, limit=3)
    return run_id


async def test_sigkill_engine_run_is_swept_failed_within_two_ttl(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    run_id = await _start_long_run(http, stack, "killed")
    stack.kill("engine")
    killed_at = time.monotonic()
    try:
        run = await eventually(
            lambda: get_run(http, stack, run_id),
            lambda r: r["status"] != "running",
            timeout_s=2 * LEASE_TTL_S + 1,
            what="orphan swept",
        )
        assert time.monotonic() - killed_at <= 2 * LEASE_TTL_S + 1
        assert run["status"] == "failed" and run["error"] == ev.ORPHAN_ERROR
        assert "running" not in [s["status"] for s in run["steps"]]
        events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
        assert events[-1].event == ev.RUN_FAILED and events[-1].json["error"] == ev.ORPHAN_ERROR
    finally:
        stack.start("engine")


async def test_frozen_engine_is_swept_and_its_later_writes_are_refused(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    run_id = await _start_long_run(http, stack, "frozen")
    stack.signal("engine", signal.SIGSTOP)
    try:
        swept = await eventually(
            lambda: get_run(http, stack, run_id),
            lambda r: r["status"] != "running",
            timeout_s=2 * LEASE_TTL_S + 1,
            what="frozen run swept",
        )
        assert swept["status"] == "failed" and swept["error"] == ev.ORPHAN_ERROR
        stack.signal("engine", signal.SIGCONT)
        # Give the zombie time to try: its next delta write and heartbeat must bounce (seen in
        # its log, waited for: a loaded machine may be slow to run the woken process).
        await asyncio.sleep(LEASE_TTL_S)
        await eventually(
            lambda: asyncio.to_thread(stack.log_text, "engine"),
            lambda log: "stale fencing token" in log or "lease lost" in log,
            timeout_s=10,
            what="the zombie's writes refused",
        )
        after = await get_run(http, stack, run_id)
        assert after == swept
    finally:
        stack.restart("engine")


async def test_sigterm_engine_pauses_its_runs_never_leaves_them_running(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    run_id = await _start_long_run(http, stack, "drained")
    stack.signal("engine", signal.SIGTERM)
    try:
        run = await eventually(
            lambda: get_run(http, stack, run_id),
            lambda r: r["status"] != "running",
            # Polling only, ample for a stalled machine: a sweep would have failed it.
            timeout_s=10,
            what="run paused by the draining engine",
        )
        assert run["status"] == "paused" and run["error"] == "engine shut down"
        assert run["steps"][0]["status"] in ("completed", "pending")
        assert "running" not in [s["status"] for s in run["steps"]]
        events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
        assert events[-1].event == ev.RUN_PAUSED
    finally:
        stack.restart("engine")


async def test_fan_out_killed_mid_way_resumes_to_exactly_all_items(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(
        http,
        stack,
        "fan-crash",
        [
            {"name": "Topics", "params": {"items": 13, "tokens": 80}},
            {
                "name": "Each",
                "kind": "fan_out",
                "source": "Topics",
                "concurrency": 1,
                "prompt": "Detail {{ item }}",
                "params": {"tokens": 10, "token_delay_ms": 20},
            },
        ],
    )
    run_id = await start_run(http, stack, workflow["id"])
    seen = 0
    async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=stack.headers) as response:
        async for frame in frames(response):
            if frame.event == ev.FAN_OUT_PROGRESS:
                seen = frame.json["done"]
                if seen == 5:
                    break
    stack.kill("engine")
    try:
        await eventually(
            lambda: get_run(http, stack, run_id),
            lambda r: r["status"] == "failed",
            timeout_s=2 * LEASE_TTL_S + 1,
            what="crashed fan-out swept",
        )
    finally:
        stack.start("engine")
    crashed = await get_run(http, stack, run_id)
    kept = {i["index"]: i["output"] for i in crashed["steps"][1]["items"]}
    assert 5 <= len(kept) < 13

    resumed = await http.post(f"/v1/workflows/{workflow['id']}/resume", headers=stack.headers)
    assert resumed.status_code == 201, resumed.text
    events = await read_events(http, f"/v1/runs/{resumed.json()['id']}/events", stack.headers)

    assert events[-1].event == ev.RUN_COMPLETED
    redone = [f.json["index"] for f in events if f.event == ev.FAN_OUT_PROGRESS]
    assert sorted(redone) == sorted(set(range(13)) - set(kept))
    final = await get_run(http, stack, resumed.json()["id"])
    items = final["steps"][1]["items"]
    assert [i["index"] for i in items] == list(range(13))
    assert all(items[i]["output"] == out for i, out in kept.items())

"""The gateway's /metrics: Prometheus text, SSE clients counted up and back down."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} missing"
    return float(match.group(1))


async def test_metrics_count_clients_and_need_no_key(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "metrics", steps(2, tokens=20, token_delay_ms=50))
    run_id = await start_run(http, stack, workflow["id"])
    url = f"/v1/runs/{run_id}/events"
    started = asyncio.Event()

    async def follow() -> None:
        # Keep reading: leaving the line iterator early closes the response.
        async with http.stream("GET", url, headers=stack.headers) as live:
            async for line in live.aiter_lines():
                if line.startswith("event: step_started"):
                    started.set()

    reader = asyncio.create_task(follow())
    await asyncio.wait_for(started.wait(), 30)
    during = (await http.get("/metrics")).text
    assert gauge(during, "nyxflow_sse_clients") >= 1
    assert gauge(during, "nyxflow_upstream_streams") >= 1
    await asyncio.wait_for(reader, 60)
    events = await read_events(http, url, stack.headers)
    assert events[-1].event == "run_completed"

    response = await http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert gauge(response.text, "nyxflow_sse_clients") == 0  # the stream ended, the count too
    assert gauge(response.text, "nyxflow_upstream_streams") == 0

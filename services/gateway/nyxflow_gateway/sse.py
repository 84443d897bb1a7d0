"""A run's events to one browser as SSE frames, through the gateway's shared RunHub.

The hub holds one upstream per run (see hub.py); this module only turns one subscriber's
inbox into frames: `retry:` first, one frame an event, a comment heartbeat when idle. A closed
tab ends the generator, which unsubscribes; the last one out cancels the upstream, never the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nyxflow.sse import comment_frame, retry_frame
from nyxflow_gateway.deps import Services
from nyxflow_gateway.hub import END, Frame, RunHub, Subscriber
from nyxflow_gateway.settings import GatewaySettings

MAX_BATCH = 64
IDLE = Frame(-1, "")  # nothing arrived within the heartbeat interval
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


async def frames(
    hub: RunHub,
    services: Services,
    run_id: str,
    status: str,
    after_seq: int,
    settings: GatewaySettings,
) -> AsyncIterator[str]:
    # Subscribed on the first iteration, so a response that never starts holds nothing.
    subscriber = hub.subscribe(services, run_id, status, after_seq)
    try:
        yield retry_frame(settings.sse_retry_ms)
        backlog, subscriber.backlog = subscriber.backlog, []
        for start in range(0, len(backlog), MAX_BATCH):
            yield "".join(f.text for f in backlog[start : start + MAX_BATCH])
        while True:
            item = await _next(subscriber, settings.sse_heartbeat_s)
            if item is IDLE:
                yield comment_frame()
                continue
            # Under load, send what has queued up in one write: far less work per event.
            chunk: list[str] = []
            while item is not END:
                chunk.append(item.text)
                if subscriber.queue.empty() or len(chunk) >= MAX_BATCH:
                    break
                item = subscriber.queue.get_nowait()
            if chunk:
                yield "".join(chunk)
            if item is END:  # the run ended, the upstream broke, or this client was dropped
                return
    finally:
        hub.unsubscribe(run_id, subscriber)


async def _next(subscriber: Subscriber, timeout_s: float) -> Frame | None:
    """The next frame, END, or IDLE after `timeout_s`. A frame already queued costs no timer:
    with a thousand browsers on a run, this wait runs a thousand times per event."""
    if not subscriber.queue.empty():
        return subscriber.queue.get_nowait()
    try:
        async with asyncio.timeout(timeout_s):
            return await subscriber.queue.get()
    except TimeoutError:
        return IDLE

"""Relaying a run's events to one browser as SSE, without ever restarting the run.

A pending run is started through engine Execute; any other run, or a start lost to another
connection, is followed through runs WatchRun from the last seq sent. A pump task reads the
upstream into a bounded queue: a client that stops reading is dropped alone, and a closed tab
cancels the pump, which cancels the upstream gRPC stream (never the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nyxflow import events as ev
from nyxflow.errors import FailedPrecondition, Unavailable
from nyxflow.sse import comment_frame, event_frame, retry_frame
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway import convert
from nyxflow_gateway.deps import Services
from nyxflow_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
END = object()
MAX_BACKOFF_S = 5.0


@dataclass
class StreamGauge:
    """How many upstream gRPC streams the gateway holds right now."""

    upstream_streams: int = 0


async def upstream(
    services: Services, run_id: str, status: str, after_seq: int
) -> AsyncIterator[pb.RunEvent]:
    """Every event after `after_seq`, in order, once, to the terminal one."""
    last = after_seq
    if status == ev.PENDING:
        try:
            async for event in services.engine.execute(run_id):
                if event.seq <= last:
                    continue
                last = event.seq
                yield event
                if event.type in ev.TERMINAL_EVENTS:
                    return
        except (FailedPrecondition, Unavailable) as error:
            # Another connection won the start, or the engine is away: follow instead.
            log.info("following instead of starting", extra={"run_id": run_id, "why": str(error)})
    backoff = 0.2
    while True:
        try:
            async for event in services.runs.watch_run(run_id, last):
                if event.seq <= last:
                    continue
                last = event.seq
                yield event
                if event.type in ev.TERMINAL_EVENTS:
                    return
            return
        except Unavailable:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


async def _pump(
    source: AsyncIterator[pb.RunEvent],
    queue: asyncio.Queue[object],
    gauge: StreamGauge,
    dropped: asyncio.Event,
) -> None:
    gauge.upstream_streams += 1
    try:
        async for event in source:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("slow SSE client dropped", extra={"run_id": event.run_id})
                dropped.set()
                return
    except Exception as error:  # the browser gets what arrived; EventSource reconnects
        log.warning("upstream ended", extra={"error": str(error)})
    finally:
        gauge.upstream_streams -= 1
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(END)
        with contextlib.suppress(Exception):
            await source.aclose()  # type: ignore[attr-defined]


async def frames(
    services: Services,
    run_id: str,
    status: str,
    after_seq: int,
    settings: GatewaySettings,
    gauge: StreamGauge,
) -> AsyncIterator[str]:
    queue: asyncio.Queue[object] = asyncio.Queue(settings.sse_queue_events)
    dropped = asyncio.Event()
    source = upstream(services, run_id, status, after_seq)
    pump = asyncio.create_task(_pump(source, queue, gauge, dropped))
    try:
        yield retry_frame(settings.sse_retry_ms)
        while not dropped.is_set():  # too slow: end this stream; EventSource reconnects
            try:
                item = await asyncio.wait_for(queue.get(), settings.sse_heartbeat_s)
            except TimeoutError:
                if pump.done() and queue.empty():
                    return
                yield comment_frame()
                continue
            if item is END:
                return
            assert isinstance(item, pb.RunEvent)
            yield event_frame(item.seq, item.type, convert.event_data(item))
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump

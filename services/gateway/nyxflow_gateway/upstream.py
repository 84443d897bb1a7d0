"""A run's events from the services, in order, once each, to the terminal one: started through
engine Execute when pending, else (or when another start won) followed through runs WatchRun."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from nyxflow import events as ev
from nyxflow.errors import FailedPrecondition, Unavailable
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway.deps import Services

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0


async def upstream(
    services: Services, run_id: str, status: str, after_seq: int
) -> AsyncIterator[pb.RunEvent]:
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

"""A run's stored events after a seq, read in one go: what a page that cannot hold an event
stream asks for every few seconds instead of the whole run (every step's output and items).

Read through runs WatchRun, which replays the stored events first; the read stops at the
run's last event as it was just before, so an active run's live tail is never waited for."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway.deps import Services

log = logging.getLogger(__name__)
MAX_EVENTS = 500  # per call
MAX_BYTES = 1 << 20  # of event data per call, about: a step's output can be large
READ_TIMEOUT_S = 5.0


async def stored_events(
    services: Services, run_id: str, after_seq: int, through_seq: int, limit: int
) -> list[pb.RunEvent]:
    """The events after `after_seq` through `through_seq` (stored already), in seq order: at
    most `limit` and about MAX_BYTES characters of data (UTF-8: up to 4 bytes each, far under
    a message's limit), and at least one when there is one. What was
    read when runs is slow to answer is returned; the caller asks again from there."""
    found: list[pb.RunEvent] = []
    size = 0
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            watch = services.runs.watch_run_batches(run_id, after_seq)
            async with contextlib.aclosing(watch) as batches:
                async for events in batches:
                    for event in events:
                        found.append(event)
                        size += len(event.data_json)
                        if event.seq >= through_seq or len(found) >= limit or size >= MAX_BYTES:
                            return found
    except TimeoutError:
        log.warning("stored events read in part", extra={"run_id": run_id, "read": len(found)})
    return found

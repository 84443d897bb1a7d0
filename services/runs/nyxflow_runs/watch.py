"""WatchRun: replay from the database, then the live tail from the bus, never a gap or a repeat."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.store import Store

PAGE = 500


async def watch_run(
    store: Store,
    bus: LocalBus,
    tenant_id: str,
    run_id: str,
    after_seq: int,
    poll_s: float,
    on_silence: Callable[[], None] = lambda: None,
) -> AsyncIterator[list[pb.RunEvent]]:
    """The events after `after_seq` in consecutive batches: a page of the replay, or what the
    bus delivered together. `on_silence` is called after each `poll_s` of silence, and may end
    the watch by raising (a batch is the caller's to check: it sees each one)."""
    # NotFound before anything streams. Read before the first page: a run finished by then
    # has its terminal event (written in the same transaction) in the database too.
    status = await store.run_status(tenant_id, run_id)
    # Subscribe before the first read so nothing published in between is missed.
    sub = bus.subscribe(run_id)
    try:
        await bus.listening(sub)
        last = after_seq
        while True:
            page = await store.events_after(tenant_id, run_id, last, PAGE)
            ended = next((i for i, e in enumerate(page) if e.type in ev.TERMINAL_EVENTS), None)
            if ended is not None:
                yield page[: ended + 1]
                return
            if page:
                yield page
                last = page[-1].seq
            if len(page) == PAGE:
                continue
            if status in ev.FINISHED_RUN_STATUSES:
                return  # it ended before we came, at or before after_seq: nothing more will come
            if sub.overflowed:  # we fell behind the bus: the database has it all
                sub.overflowed = False
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                continue
            # Live tail until a gap, silence (poll the database) or the end.
            while (batch := await sub.next_batch(poll_s)) is not None:
                fresh: list[pb.RunEvent] = []
                gap = ended_here = False
                for event in batch:
                    if event.seq <= last:
                        continue
                    if event.seq != last + 1:
                        gap = True  # fill it from the database
                        break
                    fresh.append(event)
                    last = event.seq
                    if event.type in ev.TERMINAL_EVENTS:
                        ended_here = True
                        break
                if fresh:
                    yield fresh
                if ended_here:
                    return
                if gap:
                    break
            else:
                # An idle run (paused, waiting) sends no batch for the caller to check at:
                # its caller's checks are made here too, before the database is read.
                on_silence()
                # Silence: the status is read again before the next page, so that a run that
                # ended with nothing after `after_seq` for this watcher (asked from past its
                # last event) ends its watch instead of polling the database for ever.
                status = await store.run_status(tenant_id, run_id)
    finally:
        bus.unsubscribe(sub)

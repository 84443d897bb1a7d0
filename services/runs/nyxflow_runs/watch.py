"""WatchRun: replay from the database, then the live tail from the bus, never a gap or a repeat."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.polling import RunPoller
from nyxflow_runs.store import Store

PAGE = 500


async def watch_run(
    store: Store,
    bus: LocalBus,
    poller: RunPoller,
    tenant_id: str,
    run_id: str,
    after_seq: int,
    on_silence: Callable[[], None] = lambda: None,
) -> AsyncIterator[list[pb.RunEvent]]:
    """The events after `after_seq` in consecutive batches: a page of the replay, or what the
    bus delivered together. `on_silence` is called after each poll of silence, and may end the
    watch by raising (a batch is the caller's to check: it sees each one). While silent the
    run is read only once the poller saw it move (or end, or go): not on every poll."""
    # NotFound before anything streams. Read before the first page: a run finished by then
    # has its terminal event (written in the same transaction) in the database too.
    status = await store.run_status(tenant_id, run_id)
    # Subscribe before the first read so nothing published in between is missed.
    sub = bus.subscribe(run_id)
    poller.watch(tenant_id, run_id)
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
            # Live tail until a gap, the end, or silence in which the run moved.
            while True:
                begun = poller.begun
                batch = await sub.next_batch(poller.poll_s)
                if batch is None:
                    # An idle run (paused, waiting) sends no batch for the caller to check
                    # at: its caller's checks are made here too, before the database is read.
                    on_silence()
                    if sub.overflowed or await _moved(poller, begun, tenant_id, run_id, last):
                        # The status is read again before the next page, so that a run that
                        # ended with nothing after `after_seq` for this watcher (asked from
                        # past its last event) ends its watch instead of polling for ever.
                        status = await store.run_status(tenant_id, run_id)
                        break
                    continue
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
    finally:
        poller.unwatch(tenant_id, run_id)
        bus.unsubscribe(sub)


async def _moved(poller: RunPoller, begun: int, tenant_id: str, run_id: str, last: int) -> bool:
    """Whether the run has events past `last`, has finished or is gone, as a poll begun since
    round `begun` read it; True if the poller could not tell."""
    marks = await poller.marks_since(begun)
    mark = marks.get((tenant_id, run_id)) if marks is not None else None
    if mark is None:
        return True  # not read, or not found: read it to know (a deleted run is NotFound)
    last_seq, status = mark
    return last_seq > last or status in ev.FINISHED_RUN_STATUSES

"""A run's events from the services, in order, once each, to the terminal one: started through
engine Execute when pending, else (or when another start won) followed through runs WatchRun.
Events go on in the batches they arrived in, so that the hub writes each browser once per batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from nyxflow import events as ev
from nyxflow.errors import FailedPrecondition, Unavailable
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway.deps import Services

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0


Replay = Callable[[int], AsyncGenerator[Sequence[pb.RunEvent], None]]
FILL_TIMEOUT_S = 5.0


class _Cursor:
    """The last seq passed on, so that no source repeats what another already gave, and
    none skips one: a gap is filled from the stored stream before what follows it."""

    def __init__(self, after_seq: int, replay: Replay) -> None:
        self.last = after_seq
        self.ended = False
        self._replay = replay

    async def relay(
        self, source: AsyncIterator[Sequence[pb.RunEvent]]
    ) -> AsyncGenerator[list[pb.RunEvent], None]:
        async for events in source:
            fresh: list[pb.RunEvent] = []
            for event in events:
                if event.seq <= self.last:
                    continue
                if event.seq > self.last + 1:
                    filled = await self._missing(event.seq)
                    if filled:
                        fresh += filled
                        self.last = filled[-1].seq
                    if event.seq > self.last + 1:
                        # Not to be had now: what came before the gap goes on, and the run is
                        # read again from there (WatchRun, with backoff), never past the gap.
                        if fresh:
                            yield fresh
                        raise Unavailable("a gap in the run's stream could not be filled yet")
                self.last = event.seq
                fresh.append(event)
                if event.type in ev.TERMINAL_EVENTS:
                    self.ended = True
                    break
            if fresh:
                yield fresh
            if self.ended:
                return

    async def _missing(self, before: int) -> list[pb.RunEvent]:
        """The stored events after the last one passed on and before `before` (seqs are
        gap-free in the database, so they are there)."""
        found: list[pb.RunEvent] = []
        try:
            async with asyncio.timeout(FILL_TIMEOUT_S):
                async with contextlib.aclosing(self._replay(self.last)) as stored:
                    async for events in stored:
                        for event in events:
                            if event.seq >= before:
                                return found
                            if event.seq > self.last + len(found):
                                found.append(event)
        except (TimeoutError, Unavailable) as error:
            log.warning("a gap in the stream not filled yet", extra={"why": str(error)})
        return found


async def upstream(
    services: Services, run_id: str, status: str, after_seq: int, execute_silence_s: float = 15.0
) -> AsyncGenerator[list[pb.RunEvent], None]:
    cursor = _Cursor(after_seq, lambda after: services.runs.watch_run_batches(run_id, after))
    if status == ev.PENDING:
        async for events in _start(services, run_id, cursor, execute_silence_s):
            yield events
    backoff = 0.2
    while not cursor.ended:
        try:
            watch = services.runs.watch_run_batches(run_id, cursor.last)
            async for events in cursor.relay(watch):
                yield events
            return
        except Unavailable:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


async def _start(
    services: Services, run_id: str, cursor: _Cursor, silence_s: float
) -> AsyncGenerator[list[pb.RunEvent], None]:
    """The run's events through engine Execute. An engine away before the run started is
    tried again, with backoff, for as long as the run stays pending: a pending run that is
    only followed would show its browsers nothing, for ever. Another start winning, or the
    engine lost once the run is under way (gone, or silent for `silence_s`), leaves the rest
    to WatchRun."""
    before = cursor.last
    backoff = 0.2
    while True:
        try:
            execute = _until_silent(services.engine.execute_batches(run_id), silence_s)
            async for events in cursor.relay(execute):
                yield events
            return
        except FailedPrecondition as error:
            log.info("following instead of starting", extra={"run_id": run_id, "why": str(error)})
            return
        except Unavailable as error:
            if cursor.last > before:
                return  # it started; the engine went away under it
            log.info(
                "engine away; the start is tried again", extra={"run_id": run_id, "why": str(error)}
            )
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
        try:
            run = await services.runs.get_run(run_id, brief=True)
        except Unavailable:
            continue
        if run.status != ev.PENDING:
            return  # started elsewhere, paused or cancelled meanwhile: follow it


async def _until_silent(
    source: AsyncGenerator[Sequence[pb.RunEvent], None], silence_s: float
) -> AsyncGenerator[Sequence[pb.RunEvent], None]:
    """`source`, given up as UNAVAILABLE once it says nothing for `silence_s`. A frozen engine
    keeps its stream open without a word (until gRPC's keepalive gives up, about a minute)
    while its run is swept and finished on another replica; WatchRun has it all. A step
    silent for long (a test command) costs only the switch: the run goes on either way."""
    try:
        while True:
            try:
                async with asyncio.timeout(silence_s):
                    events = await anext(source)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise Unavailable(f"the engine said nothing for {silence_s:g} s") from None
            yield events
    finally:
        await source.aclose()

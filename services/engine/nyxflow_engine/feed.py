"""A run's persisted events, in seq order, for any number of Execute callers to follow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from nyxflow.v1 import common_pb2 as pb


class RunFeed:
    def __init__(self) -> None:
        self._events: list[pb.RunEvent] = []
        self._changed = asyncio.Condition()
        self._closed = False

    async def extend(self, events: Sequence[pb.RunEvent]) -> None:
        if not events:
            return
        async with self._changed:
            self._events.extend(events)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[pb.RunEvent]:
        """Every event from the first; ends when the feed closes."""
        async for batch in self.follow_batches():
            for event in batch:
                yield event

    async def follow_batches(self) -> AsyncGenerator[list[pb.RunEvent], None]:
        """Every event from the first, in the batches that are there when the follower
        looks; ends when the feed closes. Cancelling only stops this follower."""
        index = 0
        while True:
            async with self._changed:
                while index >= len(self._events) and not self._closed:
                    await self._changed.wait()
                batch = self._events[index:]
                closed = self._closed
            if batch:
                yield batch
            index += len(batch)
            if closed and index >= len(self._events):
                return

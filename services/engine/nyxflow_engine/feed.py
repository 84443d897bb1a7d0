"""A run's persisted events, in seq order, for the Execute call that started the run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence

from nyxflow.v1 import common_pb2 as pb


class RunFeed:
    """Only the caller that started the run follows it: any other is refused the start and
    follows the run through runs' WatchRun. So what the follower has taken is let go, and
    once it stops following, or if no one will (a run the engine adopted itself), nothing
    more is kept: a long run's deltas would otherwise stay in memory to its end."""

    def __init__(self) -> None:
        self._events: list[pb.RunEvent] = []  # persisted, not yet taken by the follower
        self._changed = asyncio.Condition()
        self._closed = False
        self._following = False
        self._unfollowed = False

    @property
    def held(self) -> int:
        """Events kept for the follower to take."""
        return len(self._events)

    async def extend(self, events: Sequence[pb.RunEvent]) -> None:
        if not events or self._unfollowed:
            return
        async with self._changed:
            self._events.extend(events)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def unfollow(self) -> None:
        """No one follows, or will again: what is held and what comes are not kept."""
        self._unfollowed = True
        self._events = []

    async def follow(self) -> AsyncGenerator[pb.RunEvent, None]:
        """Every event from the first; ends when the feed closes."""
        async with contextlib.aclosing(self.follow_batches()) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def follow_batches(self) -> AsyncGenerator[list[pb.RunEvent], None]:
        """Every event from the first, in the batches that are there when the follower
        looks; ends when the feed closes. A follower that stops (cancelled, or breaking
        off) unfollows the feed."""
        if self._following or self._unfollowed:
            raise RuntimeError("a run's feed has one follower")
        self._following = True
        try:
            while True:
                async with self._changed:
                    while not self._events and not self._closed:
                        await self._changed.wait()
                    batch, self._events = self._events, []
                    closed = self._closed
                if batch:
                    yield batch
                if closed and not self._events:
                    return
        finally:
            self.unfollow()

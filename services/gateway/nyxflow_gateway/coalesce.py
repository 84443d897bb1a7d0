"""Concurrent asks for the same thing share one call.

A thousand browsers reconnecting to one run each need its status before their stream opens:
one GetRun answers all that ask while it is in flight, instead of a thousand calls at once
(each with its own gRPC call state: much of the gateway's memory at such a moment). Nothing
is kept once the call returns: the next ask makes a fresh call, so no answer is older than
the ask that shares it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Coalescer(Generic[V]):
    def __init__(self) -> None:
        self._in_flight: dict[Hashable, asyncio.Future[V]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def get(self, key: Hashable, call: Callable[[], Awaitable[V]]) -> V:
        shared = self._in_flight.get(key)
        if shared is None:
            shared = asyncio.ensure_future(call())
            self._in_flight[key] = shared
            shared.add_done_callback(lambda done: self._settled(key, done))
        # One asker leaving (a browser gone) must not cancel the call for the others.
        return await asyncio.shield(shared)

    def _settled(self, key: Hashable, done: asyncio.Future[V]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
        if not done.cancelled():
            done.exception()  # seen here, so no "never retrieved" warning if all askers left

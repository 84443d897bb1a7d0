"""An Execute caller's key, checked again while its stream lasts: a run lasts hours, and a key
revoked or expired meanwhile must stop receiving its events. Only the caller's stream ends:
the execution is the engine's, and goes on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from nyxflow.errors import NotFound, Unauthenticated
from nyxflow.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How often a stream's key is checked again (the gateway checks its browsers' as often): one
# GetRun (brief) per stream per check, never a call per event.
KEY_CHECK_S = 2.0

T = TypeVar("T")


async def _checks(check: Callable[[], Awaitable[object]], every_s: float) -> None:
    """`check` every `every_s`, until it refuses: its Unauthenticated (a key revoked or
    expired) or NotFound (a run the key may no longer see) is raised."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await check()
        except (Unauthenticated, NotFound):
            raise
        except Exception as error:  # runs away: the stream goes on, checked next time
            log.warning("a caller's key could not be checked", extra={"error": str(error)})


async def while_allowed(
    source: AsyncGenerator[T, None],
    check: Callable[[], Awaitable[object]],
    every_s: float = KEY_CHECK_S,
) -> AsyncGenerator[T, None]:
    """`source`'s items until it ends or `check` refuses (raised here), however long the
    source is silent. The check runs beside the stream: a slow one delays no item. `source`
    is closed when this ends."""
    checking = asyncio.ensure_future(_checks(check, every_s))
    following: asyncio.Future[T] = asyncio.ensure_future(anext(source))
    try:
        while True:
            either: set[asyncio.Future[Any]] = {checking, following}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if checking.done():
                checking.result()  # a refusal goes first, before anything more is sent
            try:
                item = following.result()
            except StopAsyncIteration:
                return
            yield item
            following = asyncio.ensure_future(anext(source))
    finally:
        for future in (checking, following):
            if future.done():
                if not future.cancelled():
                    future.exception()  # retrieved: raised above, or ended with the stream
            else:
                await cancel_and_wait(future)
        await source.aclose()

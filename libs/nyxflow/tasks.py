"""Stopping a background task from inside another one."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it to end. Its own cancellation is expected and swallowed;
    the caller's is passed on. `with suppress(CancelledError): await task` swallows both, so
    a caller cancelled while it waits (a shutdown, a test's teardown cancelling every task)
    carried on as if nothing had happened, and whoever cancelled it could wait for ever."""
    current = asyncio.current_task()
    # Counted, not merely checked: a caller cleaning up after a cancellation of its own (in a
    # `finally`) still has it counted, and must go on with the rest of its cleanup.
    before = current.cancelling() if current is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > before:
            raise

"""Calls to runs retried, with jittered backoff, while runs is unavailable (restarting, or a
deadline passed): the writes are idempotent (batch ids, claim ids), so a retry of one that
landed is answered as the first was."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nyxflow.errors import Unavailable

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_DELAY_S = 2.0


async def while_unavailable(call: Callable[[], Awaitable[T]], retry_s: float, run_id: str) -> T:
    deadline = time.monotonic() + retry_s
    delay, attempt = 0.1, 1
    while True:
        try:
            return await call()
        except Unavailable:
            if time.monotonic() + delay > deadline:
                raise
            wait = delay * (0.5 + random.random())
            extra = {"run_id": run_id, "attempt": attempt, "retry_in_s": round(wait, 3)}
            log.warning("runs unavailable, retrying", extra=extra)
            await asyncio.sleep(wait)
            delay, attempt = min(delay * 2, MAX_DELAY_S), attempt + 1

"""The event loop of runs (and of the bench's load generator): uvloop (libuv). Every hop of a
step is network I/O (gRPC, PostgreSQL, Redis), and uvloop's costs a fraction of asyncio's own
loop. The gateway gets it through uvicorn; the engine stays on asyncio (see its __main__)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(main)

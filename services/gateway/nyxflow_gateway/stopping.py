"""The gateway's graceful stop: event streams end at once, and a request the stop cuts short
is answered with the documented 503.

uvicorn waits, up to its graceful timeout, for every response to finish before the lifespan's
shutdown, and an event stream finishes only with its run: each was held for the whole
timeout, then cancelled mid-body with a traceback. Here every stream is ended first (what it
was sent stays whole, its last chunk follows), so EventSource reconnects with its
Last-Event-ID, to another replica, and the wait is short. A request the server still cancels
(a slow upload when the timeout runs out, a second Ctrl-C) gets a 503 that says try again,
not uvicorn's plain-text 500 and a traceback.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nyxflow.errors import Unavailable
from nyxflow_gateway import errors
from nyxflow_gateway.hub import RunHub


def is_stopping(scope: Scope) -> bool:
    """Whether the server that handles `scope` has begun to stop."""
    app = scope.get("app")
    return app is not None and bool(getattr(app.state, "stopping", False))


class Server(uvicorn.Server):
    """uvicorn's server, whose stop first ends the gateway's event streams."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._gateway = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Both before uvicorn's first await: a stream subscribes either before (and is ended
        # here) or after (and sees the flag, sse.py).
        self._gateway.state.stopping = True
        hub: RunHub | None = getattr(self._gateway.state, "hub", None)
        if hub is not None:
            hub.end_all()
        await super().shutdown(sockets)


class CutShort:
    """A request the server cancels as it stops, before its answer started, is answered 503
    (try again) and its connection closed. Any other cancellation goes on as it came."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started or scope["type"] != "http" or not is_stopping(scope) or task is None:
                raise
            task.uncancel()  # answered instead: the answer's own awaits are not cancelled
            await unavailable()(scope, receive, send)


def unavailable() -> JSONResponse:
    answer = errors.response(Unavailable("the gateway is stopping; try again"))  # Retry-After
    answer.headers["Connection"] = "close"
    return answer

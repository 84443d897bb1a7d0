"""A run's events to one browser as SSE frames, through the gateway's shared RunHub.

The hub holds one upstream per run (see hub.py); this module only writes one subscriber's
inbox to its browser: `retry:` first, then what the hub offers, a comment when the hub's
heartbeat finds the stream idle. A closed tab unsubscribes; the last one out cancels the
upstream, never the run.

A plain ASGI response rather than a StreamingResponse over a generator: with a thousand
browsers every event is written a thousand times, and the generator, the task group that
StreamingResponse starts per browser and a timer per wait cost more than the write itself.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from nyxflow.sse import comment_frame, retry_frame
from nyxflow_gateway.deps import Services
from nyxflow_gateway.hub import RunHub, Subscriber
from nyxflow_gateway.settings import GatewaySettings

MAX_BATCH = 64  # backlog frames per write when a browser joins a long run late
KEEPALIVE = comment_frame().encode()
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
MEDIA_TYPE = "text/event-stream; charset=utf-8"


class EventStream(Response):
    media_type = MEDIA_TYPE

    def __init__(
        self,
        hub: RunHub,
        services: Services,
        run_id: str,
        status: str,
        after_seq: int,
        settings: GatewaySettings,
    ) -> None:
        super().__init__(headers=HEADERS, media_type=MEDIA_TYPE)
        del self.headers["content-length"]  # a stream: chunked
        self._hub, self._services = hub, services
        self._run_id, self._status, self._after_seq = run_id, status, after_seq
        self._retry_ms = settings.sse_retry_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        # Subscribed once the response has started, so a request that fails before holds nothing.
        subscriber = self._hub.subscribe(
            self._services, self._run_id, self._status, self._after_seq
        )
        # The browser's disconnect only shows on `receive`: one idle waiter ends the stream.
        listener = asyncio.ensure_future(_until_disconnect(receive))
        listener.add_done_callback(lambda _: subscriber.end())
        try:
            await _write(send, retry_frame(self._retry_ms).encode())
            backlog, subscriber.backlog = subscriber.backlog, []
            for start in range(0, len(backlog), MAX_BATCH):
                await _write(send, b"".join(f.data for f in backlog[start : start + MAX_BATCH]))
            await _follow(subscriber, send)
            if not listener.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            self._hub.unsubscribe(self._run_id, subscriber)


async def _follow(subscriber: Subscriber, send: Send) -> None:
    while True:
        frames, ended = await subscriber.take()
        # Under load, what has piled up goes in one write: far less work per event.
        if len(frames) == 1:
            await _write(send, frames[0].data)
        elif frames:
            await _write(send, b"".join(f.data for f in frames))
        elif not ended:
            await _write(send, KEEPALIVE)
        if ended:  # the run ended, the upstream broke, the browser left or fell behind
            return


async def _write(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _until_disconnect(receive: Receive) -> None:
    message: Message = {}
    while message.get("type") != "http.disconnect":
        message = await receive()

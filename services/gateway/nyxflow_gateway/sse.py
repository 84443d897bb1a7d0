"""A run's events to one browser as SSE frames, through the gateway's shared RunHub.

The hub holds one upstream per run (see hub.py); this module serves one browser: `retry:`
first, then the backlog, then whatever the hub offers, with a comment when the hub's heartbeat
finds the stream idle. A closed tab unsubscribes; the last one out cancels the upstream, never
the run.

A plain ASGI response rather than a StreamingResponse over a generator: with a thousand
browsers every event is written a thousand times, and the generator, the task group that
StreamingResponse starts per browser and a timer per wait cost more than the write itself.
Under the gateway's own server (http_protocol.py) the hub goes further and writes each frame
straight to the connection's transport; elsewhere this task writes through ASGI `send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any, cast

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from nyxflow.sse import comment_frame, retry_frame
from nyxflow.tasks import cancel_and_wait
from nyxflow_gateway.deps import Services
from nyxflow_gateway.http_protocol import TRANSPORT
from nyxflow_gateway.hub import Drain, Frame, RunHub, Subscriber, chunk
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_gateway.stopping import is_stopping

MAX_BATCH = 64  # backlog frames per write when a browser joins a long run late
PIECE_BYTES = 256 * 1024  # the same on the connection: then room for the next is waited for
DROP_GRACE_S = 5.0  # a dropped browser that still reads this long gets the rest, then the end
KEEPALIVE = comment_frame().encode()
# No `Connection` header: the server sets it, and a request that asked to close got both.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
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
        history_seq: int = 0,
    ) -> None:
        super().__init__(headers=HEADERS, media_type=MEDIA_TYPE)
        del self.headers["content-length"]  # a stream: chunked
        self._hub, self._services = hub, services
        self._run_id, self._status, self._after_seq = run_id, status, after_seq
        self._history_seq = history_seq  # the run's last seq as the browser came
        self._retry = retry_frame(settings.sse_retry_ms).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if is_stopping(scope):
            # Ended at once, so EventSource reconnects (to another replica) with its
            # Last-Event-ID: a 503 would end it for good. No await from this check to the
            # subscribe below: a stream sees the flag or is ended by the hub's end_all.
            await send({"type": "http.response.body", "body": self._retry, "more_body": False})
            return
        transport = _transport(scope)
        # Subscribed once the response has started, so a request that fails before holds nothing.
        subscriber = self._hub.subscribe(
            self._services, self._run_id, self._status, self._after_seq, self._history_seq
        )
        # The browser's disconnect only shows on `receive`: one idle waiter ends the stream.
        listener = asyncio.ensure_future(_until_disconnect(receive))
        listener.add_done_callback(lambda _: subscriber.end())
        try:
            backlog, subscriber.backlog = subscriber.backlog, []
            if transport is not None:
                if transport.is_closing():
                    return  # gone before the stream began (its start went nowhere): quietly
                subscriber.attach(transport, _drain(scope))
                if await self._backlog(subscriber, backlog):
                    subscriber.write_directly(transport)
                    await _follow(subscriber, send)
                    # Its end too is left no longer than a browser that reads takes it.
                    await subscriber.flushed(self._hub.stall_s)
            else:
                await _write(send, self._retry)
                for start in range(0, len(backlog), MAX_BATCH):
                    batch = backlog[start : start + MAX_BATCH]
                    await _write(send, b"".join(f.data for f in batch))
                await _follow(subscriber, send)
        finally:
            self._hub.unsubscribe(subscriber)
            await cancel_and_wait(listener)
        if subscriber.dropped and transport is not None:
            await _drop(transport, receive)
            return
        if not listener.cancelled() and listener.done():
            return  # the browser is gone: nothing more to send
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _backlog(self, subscriber: Subscriber, backlog: list[Frame]) -> bool:
        """`retry:` and the backlog, a piece at a time, each once the connection has room: a
        copy of the channel's frames (up to sse_keep_bytes) per browser, written at once, sat
        in the gateway as long as a stalled browser's connection. Live frames that come in
        meanwhile wait in the browser's inbox. False when the browser was dropped."""
        subscriber.send(chunk(self._retry))
        for piece in _pieces(backlog):
            if subscriber.refused:
                break
            subscriber.send(piece)
            # Its inbox is bounded by its own limits: only the connection's buffer is waited on.
            await subscriber.room(self._hub.stall_s, pending_too=False)
        return not subscriber.dropped


def _pieces(frames: list[Frame]) -> Iterator[bytes]:
    """`frames`' chunks joined in pieces of about PIECE_BYTES (a frame is never split)."""
    piece: list[bytes] = []
    size = 0
    for frame in frames:
        piece.append(frame.chunk)
        size += len(frame.chunk)
        if size >= PIECE_BYTES:
            yield b"".join(piece)
            piece, size = [], 0
    if piece:
        yield b"".join(piece)


def _drain(scope: Scope) -> Drain | None:
    extension: dict[str, Any] = scope.get("extensions", {}).get(TRANSPORT, {})
    return cast("Drain | None", extension.get("drain"))


def _transport(scope: Scope) -> asyncio.WriteTransport | None:
    extension: dict[str, Any] = scope.get("extensions", {}).get(TRANSPORT, {})
    # uvloop's transports do not derive from asyncio's classes, hence no isinstance.
    return cast("asyncio.WriteTransport | None", extension.get("transport"))


async def _drop(transport: asyncio.WriteTransport, receive: Receive) -> None:
    """A browser dropped for falling behind gets the end of the response after what it was
    sent, and its connection closes once that is flushed. One that reads no more never takes
    it: after DROP_GRACE_S it is reset, and its unsent bytes let go, which a graceful close
    would keep for as long as the peer lives. Its Last-Event-ID is then the last whole frame
    it read, so its reconnect has no hole. (Not through `send`: it waits for a reader.)"""
    transport.write(chunk(b""))
    transport.close()
    try:
        async with asyncio.timeout(DROP_GRACE_S):
            await _until_disconnect(receive)
            return
    except TimeoutError:
        pass
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    with contextlib.suppress(TimeoutError):  # the server hears of it: no response is owed
        async with asyncio.timeout(1):
            await _until_disconnect(receive)


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

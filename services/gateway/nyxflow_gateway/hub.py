"""One upstream per run per gateway, shared by every browser following that run.

The first browser to ask for a run opens its upstream (Execute if pending, else WatchRun from
the start); its last `keep_frames` events are kept for the life of the channel, so a browser
that arrives later, or reconnects with a Last-Event-ID, is served from memory and then live.
A browser that needs older events than those (a long run, joined from its start) gets a
private channel: its own WatchRun from its Last-Event-ID, keeping nothing. So a followed run
costs the gateway a bounded amount of memory however long it runs. When the last browser of a
channel leaves, its upstream is cancelled: never the run.

A browser's key is checked when its stream opens and then again every few seconds, once per
key however many browsers use it: a key revoked or expired ends its browsers' streams (their
EventSource reconnects and gets the 401), and only theirs. Checked only at the open, a stream
carried the run's outputs to a revoked key until the run ended, hours later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nyxflow import events as ev
from nyxflow import metrics
from nyxflow.errors import NotFound, Unauthenticated
from nyxflow.sse import comment_frame, event_frame
from nyxflow.tasks import cancel_and_wait
from nyxflow_gateway import convert
from nyxflow_gateway.deps import Services
from nyxflow_gateway.upstream import upstream

log = logging.getLogger(__name__)

# How often the keys of the browsers followed are checked again: the longest a revoked or
# expired key's stream goes on. One GetRun (brief) per distinct key per check, whatever the
# number of its browsers; at most KEY_CHECKS_AT_ONCE of them in flight.
KEY_CHECK_S = 2.0
KEY_CHECKS_AT_ONCE = 16
# While history waits for a browser's connection to drain: how often its progress is looked at.
ROOM_CHECK_S = 0.5
# Below this a connection's buffer is never waited for: the transport's own high-water mark.
MIN_ROOM = 64 * 1024

Drain = Callable[[], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass(frozen=True)
class Frame:
    """An event, encoded (and framed as a chunk) once for every browser that receives it."""

    seq: int
    chunk: bytes

    @property
    def data(self) -> bytes:
        return self.chunk[self.chunk.index(b"\r\n") + 2 : -2]


KEEPALIVE = chunk(comment_frame().encode())


class Subscriber:
    """One browser's bounded inbox: a browser that falls this far behind is dropped alone.

    With a thousand browsers every event is offered a thousand times, so an offer must cost
    little. Once the browser has its backlog, and when the server offers the connection's
    transport, an offer writes the frames' chunks there and then, in one write for what
    arrived together: no task wakes per browser per event. Otherwise the frames wait in
    `pending` for the browser's task (`take`).

    A browser that does not read is dropped once `size` live frames wait for it in this
    process (in `pending`, or in the transport's buffer beyond what the socket holds), or, on
    the transport, once a live write leaves more than `max_bytes` unsent: a run of long
    results would otherwise hold a thousand of them per browser. What the
    run had written when the browser came (up to `history_seq`) is its history, sent whole
    like a backlog: the first browser of a long run gets it from the upstream's replay, in a
    burst no browser reads at once, and was dropped part-way, reconnecting again and again.
    History is paced instead: once half of `max_bytes` of it wait for the browser (the other
    half is left for the live frames after it, which would drop a browser that reads), its
    channel stops pulling until they drain (`room`), and a browser that takes none of them
    for `stall_s` is dropped. Written whole at once, a stalled tab held a run's whole history
    in the gateway."""

    def __init__(
        self,
        size: int,
        after_seq: int,
        history_seq: int = 0,
        max_bytes: int = 8 * 1024 * 1024,
        services: Services | None = None,
    ) -> None:
        self.size = size
        self.services = services  # the browser's key: checked again while it follows
        self.refused = False  # its key was revoked or expired
        self.history_seq = history_seq
        self.max_bytes = max_bytes  # on the transport: unsent bytes a live write may leave
        self.pending: list[Frame] = []
        self._pending_live = 0  # frames in `pending` past `history_seq`
        self.ended = False  # the run ended, the upstream broke, the browser left or was dropped
        self.dropped = False
        self.idle = False  # a heartbeat is due
        self.quiet = True  # nothing offered since the hub's last heartbeat tick
        self.after_seq = after_seq  # everything up to here was sent already: never twice
        self.backlog: list[Frame] = []  # frames the channel held when this browser joined
        self.channel: RunChannel | None = None  # while subscribed
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._unsent = 0  # frames written while the transport still held unsent bytes
        self._pending_bytes = 0  # the size of `pending`
        self._connection: asyncio.WriteTransport | None = None  # its unsent bytes are counted
        self._drain: Drain | None = None  # returns once the connection's buffer is low again
        self._written = 0  # bytes written to the connection, or taken from `pending`

    def attach(self, transport: asyncio.WriteTransport, drain: Drain | None) -> None:
        """The browser's connection, whose unsent bytes `room` waits on (before the backlog)."""
        self._connection, self._drain = transport, drain

    def write_directly(self, transport: asyncio.WriteTransport) -> None:
        """From now on, offers go straight to `transport` (the backlog is written): what
        arrived meanwhile first."""
        self._connection = self._connection or transport
        self._transport = transport
        if self.pending:
            self._write(b"".join([f.chunk for f in self.pending]), 0)
        self.pending, self._pending_live, self._pending_bytes = [], 0, 0

    def send(self, data: bytes) -> None:
        """`data` to the connection, counted (the backlog, before `write_directly`)."""
        assert self._connection is not None
        if not self._connection.is_closing():
            self._connection.write(data)
            self._written += len(data)

    def unsent(self) -> int:
        """Bytes held in this process for the browser: in its connection's buffer or pending."""
        return self._buffered() + self._pending_bytes

    def _buffered(self) -> int:
        connection = self._connection
        if connection is None or connection.is_closing():
            return 0
        return connection.get_write_buffer_size()

    async def room(self, stall_s: float, pending_too: bool = True) -> bool:
        """Until no more than half of `max_bytes` wait for the browser (in its connection's buffer,
        and pending unless not `pending_too`), or it leaves; False once it took none of them
        for `stall_s`: it is dropped (its reconnect loses nothing)."""
        size = self.unsent if pending_too else self._buffered
        return await self._wait(size, self._history_room(), stall_s)

    async def flushed(self, stall_s: float) -> bool:
        """After its stream's end, until the connection has (nearly) all of it sent: False,
        and dropped, once the browser took none of it for `stall_s`."""
        return await self._wait(self._buffered, 0, stall_s)

    async def _wait(self, size: Callable[[], int], limit: int, stall_s: float) -> bool:
        limit = max(limit, MIN_ROOM)  # below it the transport never says it drained
        loop = asyncio.get_running_loop()
        taken, since = self._taken(), loop.time()
        # A browser gone has nothing buffered: its closed connection holds nothing more.
        while size() > limit and not (self.refused or self.dropped):
            await self._drained(min(ROOM_CHECK_S, stall_s))
            if self._taken() > taken:  # progress, however slow: the browser reads
                taken, since = self._taken(), loop.time()
            elif loop.time() - since >= stall_s:
                self.dropped = self.ended = True
                self._wake()
                return False
        return not self.dropped

    def _history_room(self) -> int:
        return self.max_bytes // 2

    def _taken(self) -> int:
        """Bytes the browser has taken so far: out of the connection's buffer, or pending."""
        return self._written - self._buffered()

    async def _drained(self, at_most_s: float) -> None:
        if self._drain is None or (self._transport is None and self._pending_bytes):
            await asyncio.sleep(at_most_s)  # pending frames go when the browser's task takes them
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most_s):
                await self._drain()

    def offer(self, frames: list[Frame], joined: bytes | None = None) -> bool:
        """Frames that arrived together, in seq order: on the transport, one write for all.
        `joined` is their chunks already joined, once for every browser (see RunHub._pump).
        True when history left more than half of `max_bytes` waiting for the browser: its channel
        waits for `room` before the next."""
        if self.ended or not frames:
            return False
        if frames[0].seq <= self.after_seq:
            frames = [f for f in frames if f.seq > self.after_seq]
            if not frames:
                return False
            joined = None  # some were sent already: the rest is joined for this one alone
        self.quiet = False
        history = self._history(frames)
        if self._transport is not None:
            self.after_seq = frames[-1].seq
            if joined is None:
                joined = b"".join([f.chunk for f in frames])
            self._write(joined, len(frames) - history)
            return bool(history) and self.unsent() > self._history_room()
        room = self.size - self._pending_live
        if room < len(frames) - history:
            # Too far behind: what is pending is still sent, then the stream ends. Nothing
            # pending is discarded, so the browser's Last-Event-ID leaves no hole.
            frames = frames[: history + max(room, 0)]
            self.dropped = self.ended = True
        if frames:
            self.after_seq = frames[-1].seq
            self.pending.extend(frames)
            self._pending_live += len(frames) - history
            self._pending_bytes += sum(len(f.chunk) for f in frames)
        self._wake()
        return bool(history) and self.unsent() > self._history_room()

    def _history(self, frames: list[Frame]) -> int:
        """How many of `frames` (in seq order) are the browser's history."""
        if frames[0].seq > self.history_seq:
            return 0  # live, as nearly always: no count per browser per event
        if frames[-1].seq <= self.history_seq:
            return len(frames)
        return sum(1 for f in frames if f.seq <= self.history_seq)

    def heartbeat(self) -> None:
        """Called by the hub's one ticker: a browser that heard nothing gets a comment."""
        if self.quiet and not self.ended:
            if self._transport is not None:
                # Not while history waits for the browser to take some: it is not idle, and
                # the comment, counted as live, would drop a browser that reads slowly.
                if self._buffered() + len(KEEPALIVE) <= self.max_bytes:
                    self._write(KEEPALIVE, 1)
            else:
                self.idle = True
                self._wake()
        self.quiet = True

    def end(self) -> None:
        """Nothing more: what is pending is still sent, then the stream ends."""
        if not self.ended:
            self.ended = True
            self._wake()

    def refuse(self) -> None:
        """Its key is no longer valid: the stream ends without what is pending, which the
        key may no longer read."""
        self.refused = True
        self.pending, self._pending_live, self._pending_bytes = [], 0, 0
        self.ended = True
        self._wake()

    async def take(self) -> tuple[list[Frame], bool]:
        """What is pending (possibly nothing, when only a heartbeat is due) and whether the
        stream ends after it."""
        while not (self.pending or self.ended or self.idle):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frames, self.pending, self.idle = self.pending, [], False
        self._written += self._pending_bytes
        self._pending_live = self._pending_bytes = 0
        return frames, self.ended

    def _write(self, data: bytes, count: int) -> None:
        """`data` (`count` frames) to the transport; too many frames unsent drops the browser."""
        transport = self._transport
        assert transport is not None
        if transport.is_closing():  # gone: the browser's task hears of it from the server
            return
        transport.write(data)
        self._written += len(data)
        unsent = transport.get_write_buffer_size()
        if not unsent:
            self._unsent = 0
        elif count:
            self._unsent += count
            if self._unsent > self.size or unsent > self.max_bytes:
                # Too far behind: the stream ends (sse.py resets a connection that reads no
                # more), never with a hole before the browser's Last-Event-ID.
                self.dropped = self.ended = True
                self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@dataclass(eq=False)  # by identity: channels live in sets
class RunChannel:
    run_id: str
    shared: bool = True  # False: one late browser's own upstream, keeping no frames
    frames: list[Frame] = field(default_factory=list)
    kept_bytes: int = 0  # the size of `frames`
    trimmed: int = 0  # frames up to this seq were let go (beyond keep_frames or keep_bytes)
    subscribers: set[Subscriber] = field(default_factory=set)
    done: bool = False
    task: asyncio.Task[None] | None = None


class RunHub:
    def __init__(
        self,
        queue_size: int,
        heartbeat_s: float,
        keep_frames: int = 5000,
        keep_bytes: int = 16 * 1024 * 1024,
        queue_bytes: int = 8 * 1024 * 1024,
        execute_silence_s: float = 15.0,
        key_check_s: float = KEY_CHECK_S,
        stall_s: float = 30.0,
    ) -> None:
        self._queue_size = queue_size
        self.stall_s = stall_s  # a browser that takes nothing of its backlog this long is dropped
        self._key_check_s = key_check_s
        self._execute_silence_s = execute_silence_s
        self._queue_bytes = queue_bytes
        self._heartbeat_s = heartbeat_s
        self._keep = keep_frames
        self._keep_bytes = keep_bytes
        self._channels: dict[str, RunChannel] = {}  # the shared ones, by run
        self._private: set[RunChannel] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._key_checker: asyncio.Task[None] | None = None
        self.upstream_streams = 0
        self.key_checks = 0  # calls made to check keys again

    async def close(self) -> None:
        for task in [self._ticker, self._key_checker, *(c.task for c in self._all())]:
            if task is not None:
                await cancel_and_wait(task)

    def end_all(self) -> None:
        """The gateway stops: every browser's stream ends after what it was offered (its
        EventSource reconnects with its Last-Event-ID, to another replica), and a browser
        that joins a channel now gets its end at once."""
        for channel in self._all():
            channel.done = True
            for subscriber in tuple(channel.subscribers):
                subscriber.end()

    @property
    def channels(self) -> int:
        return len(self._channels) + len(self._private)

    def _all(self) -> list[RunChannel]:
        return [*self._channels.values(), *self._private]

    def unsent_bytes(self) -> int:
        """Bytes held for browsers, in their connections' buffers or pending (for /metrics)."""
        return sum(s.unsent() for c in self._all() for s in c.subscribers)

    def _open(
        self, services: Services, run_id: str, status: str, after_seq: int, shared: bool
    ) -> RunChannel:
        channel = RunChannel(run_id, shared)
        if shared:
            self._channels[run_id] = channel
        else:
            self._private.add(channel)
        channel.task = asyncio.create_task(self._pump(channel, services, status, after_seq))
        return channel

    def subscribe(
        self,
        services: Services,
        run_id: str,
        status: str,
        after_seq: int,
        history_seq: int = 0,
    ) -> Subscriber:
        """`history_seq`: the run's last seq when the browser came (see Subscriber)."""
        channel = self._channels.get(run_id)
        if channel is None:
            # From the browser's Last-Event-ID, not from the start: a reconnect re-read the
            # whole run. Browsers that need older events get their own channel (`trimmed`).
            channel = self._open(services, run_id, status, after_seq, shared=True)
            channel.trimmed = after_seq
        elif after_seq < channel.trimmed:
            # It needs events the channel let go: its own WatchRun from its Last-Event-ID
            # (the shared channel started the run already, if it was pending).
            channel = self._open(services, run_id, ev.RUNNING, after_seq, shared=False)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="sse-heartbeat")
        if self._key_checker is None:
            self._key_checker = asyncio.create_task(self._check_keys(), name="sse-key-check")
        subscriber = Subscriber(
            self._queue_size, after_seq, history_seq, self._queue_bytes, services
        )
        # What the channel already holds is replayed from memory, outside the bounded inbox:
        # joining a long run late is not falling behind. Only live frames go through the inbox.
        subscriber.backlog = [f for f in channel.frames if f.seq > after_seq]
        if subscriber.backlog:
            subscriber.after_seq = subscriber.backlog[-1].seq
        if channel.done:
            subscriber.end()
        channel.subscribers.add(subscriber)
        subscriber.channel = channel
        metrics.SSE_CLIENTS.inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        channel, subscriber.channel = subscriber.channel, None
        if channel is None or subscriber not in channel.subscribers:
            return
        channel.subscribers.discard(subscriber)
        metrics.SSE_CLIENTS.dec()
        if not channel.subscribers:
            if self._channels.get(channel.run_id) is channel:
                del self._channels[channel.run_id]
            self._private.discard(channel)
            # The upstream gRPC stream goes; the run does not. The channel lets go of its task
            # as it cancels it: the CancelledError's traceback holds the channel, and the two
            # in a cycle would keep the run's frames until the cycle collector's full pass.
            task, channel.task = channel.task, None
            if task is not None:
                task.cancel()

    async def _tick(self) -> None:
        """One timer for every browser, instead of one per browser per wait. It ticks twice
        per interval and a browser that heard nothing since the last tick gets a comment: at a
        tick per interval, an event just after one left the browser silent for nearly two."""
        while True:
            await asyncio.sleep(self._heartbeat_s / 2)
            self._heartbeats()

    def _heartbeats(self) -> None:
        # A method of its own, as `_followed`: loop variables left bound across the sleep
        # kept the last channel (its frames, up to keep_bytes) and browser while idle.
        for channel in self._all():
            for subscriber in tuple(channel.subscribers):
                subscriber.heartbeat()

    async def _check_keys(self) -> None:
        """Every `key_check_s`, each distinct key with browsers is asked once whether it may
        still read a run it follows: a thousand browsers of one key cost one call."""
        limit = asyncio.Semaphore(KEY_CHECKS_AT_ONCE)
        while True:
            await asyncio.sleep(self._key_check_s)
            # Awaited before the next sleep: checks never pile up behind a slow runs.
            await asyncio.gather(*(self._check(s, r, limit) for s, r in self._followed().items()))

    def _followed(self) -> dict[Services, str]:
        """Each distinct key with browsers, and one run it follows."""
        followed: dict[Services, str] = {}
        for channel in self._all():
            for subscriber in channel.subscribers:
                if subscriber.services is not None and not subscriber.ended:
                    followed.setdefault(subscriber.services, channel.run_id)
        return followed

    async def _check(self, services: Services, run_id: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            self.key_checks += 1
            try:
                await services.runs.get_run(run_id, brief=True)
            except (Unauthenticated, NotFound) as error:
                self._refuse(services, run_id, error)
            except Exception as error:  # runs away: the streams go on, checked next time
                log.info("a key could not be checked", extra={"error": str(error)})

    def _refuse(self, services: Services, run_id: str, error: Exception) -> None:
        """Ends the streams of a key runs refused: all of them for a key revoked or expired,
        those of `run_id` for a run the key may no longer see."""
        log.info("streams of a refused key ended", extra={"run_id": run_id, "why": str(error)})
        whole_key = isinstance(error, Unauthenticated)
        for channel in self._all():
            if whole_key or channel.run_id == run_id:
                for subscriber in tuple(channel.subscribers):
                    if subscriber.services is services:
                        subscriber.refuse()

    async def _pump(
        self, channel: RunChannel, services: Services, status: str, after_seq: int
    ) -> None:
        self.upstream_streams += 1
        metrics.UPSTREAM_STREAMS.inc()
        last = after_seq
        try:
            while True:
                source = upstream(services, channel.run_id, status, last, self._execute_silence_s)
                try:
                    async for events in source:
                        if not events:
                            continue
                        frames = [
                            Frame(
                                e.seq,
                                chunk(event_frame(e.seq, e.type, convert.event_data(e)).encode()),
                            )
                            for e in events
                        ]
                        last = frames[-1].seq
                        if channel.shared:
                            self._keep_frames(channel, frames)
                        joined = b"".join([f.chunk for f in frames])
                        await self._offer(channel, frames, joined)
                    return
                except (Unauthenticated, NotFound) as error:
                    # The key the upstream was opened with (its first browser's) was refused:
                    # its browsers go, and the others' streams go on through one of their
                    # keys from where it stopped, with no gap and nothing twice.
                    self._refuse(services, channel.run_id, error)
                    successor = next(
                        (
                            s.services
                            for s in channel.subscribers
                            if not s.ended and s.services is not None
                        ),
                        None,
                    )
                    if successor is None:
                        raise
                    services = successor
                    status = ev.RUNNING if last > after_seq else status
                finally:
                    with contextlib.suppress(Exception):
                        await source.aclose()
        except Exception as error:  # browsers get what arrived; EventSource reconnects
            log.warning("upstream ended", extra={"run_id": channel.run_id, "error": str(error)})
        finally:
            self.upstream_streams -= 1
            metrics.UPSTREAM_STREAMS.dec()
            channel.done = True
            for subscriber in tuple(channel.subscribers):
                subscriber.end()

    async def _offer(self, channel: RunChannel, frames: list[Frame], joined: bytes) -> None:
        """`frames` to every browser of the channel; history that backed a browser up is
        waited for before the next batch is pulled from runs, for `stall_s` at most: then it
        is dropped, and the channel's other browsers go on."""
        behind = [s for s in tuple(channel.subscribers) if s.offer(frames, joined)]
        if behind:
            await asyncio.gather(*(s.room(self.stall_s) for s in behind))

    def _keep_frames(self, channel: RunChannel, frames: list[Frame]) -> None:
        """The last `keep_frames`, and no more than `keep_bytes` of them, let go of a quarter
        at a time (not one by one: each cut moves the whole list)."""
        channel.frames.extend(frames)
        channel.kept_bytes += sum(len(f.chunk) for f in frames)
        kept = channel.frames
        if len(kept) <= self._keep + self._keep // 4 and channel.kept_bytes <= self._keep_bytes:
            return
        cut, size = max(0, len(kept) - self._keep), channel.kept_bytes
        size -= sum(len(f.chunk) for f in kept[:cut])
        while cut < len(kept) and size > self._keep_bytes * 3 // 4:
            size -= len(kept[cut].chunk)
            cut += 1
        if cut:
            channel.trimmed = kept[cut - 1].seq
            del kept[:cut]
            channel.kept_bytes = size

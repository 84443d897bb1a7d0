"""Live fan-out of persisted events to watchers: in-process, or Redis pub/sub between replicas.

The bus is only a fast path. Watchers read the database first and whenever they see a gap or
hear nothing for a while, so a lost message (or Redis being down) delays an event, never loses it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from nyxflow import metrics
from nyxflow.tasks import cancel_and_wait
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "nyxflow:run:"
# The reader's connection holds this one channel while no run is watched: redis-py's listen()
# ends on a connection without subscriptions.
IDLE_CHANNEL = "nyxflow:bus:idle"
# Every replica's reader listens here: a key revoked on one replica is dropped from every
# replica's key cache at once, not when the cache entry runs out (tenancy.py).
KEYS_CHANNEL = "nyxflow:keys:revoked"
ANNOUNCE_WAIT_S = 2.0  # a revocation tells the other replicas for this long at most
SUBSCRIBE_WAIT_S = 1.0  # a watcher waits this long for Redis to confirm, then polls anyway
QUEUE_BATCHES = 256
OUTBOX_LIMIT = 10_000  # batches queued for Redis before they are delivered locally only
# NYXFLOW_REDIS_TIMEOUT_S's default: a Redis that says nothing this long is taken for gone.
# A command (a publish) fails, and the reader, quiet this long, pings and reconnects if no
# answer comes within as long again. A connection a NAT or load balancer forgot, or a host
# that vanished, never closes: without it the reader and the sender waited on one for good,
# and every watcher polled from then on.
REDIS_TIMEOUT_S = 5.0


class Subscription:
    """One watcher's inbox for one run. On overflow it is marked and drained: re-read the DB."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[Sequence[pb.RunEvent]] = asyncio.Queue(QUEUE_BATCHES)
        self.overflowed = False

    def deliver(self, events: Sequence[pb.RunEvent]) -> None:
        try:
            self.queue.put_nowait(events)
        except asyncio.QueueFull:
            self.overflowed = True

    async def next_batch(self, timeout_s: float) -> Sequence[pb.RunEvent] | None:
        """The next batch, or None after `timeout_s` of silence."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None


class LocalBus:
    """Delivers within this process; the default when no Redis is configured."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._on_keys_revoked: list[Callable[[], None]] = []

    async def start(self) -> None:
        return None

    def on_keys_revoked(self, callback: Callable[[], None]) -> None:
        """`callback` runs whenever a key is revoked, on this replica or another."""
        self._on_keys_revoked.append(callback)

    async def announce_keys_revoked(self) -> None:
        self._keys_revoked()

    def _keys_revoked(self) -> None:
        for callback in self._on_keys_revoked:
            callback()

    async def close(self) -> None:
        return None

    def subscribe(self, run_id: str) -> Subscription:
        sub = Subscription(run_id)
        self._subs[run_id].add(sub)
        return sub

    async def listening(self, sub: Subscription) -> None:
        """Returns once what is published for `sub`'s run reaches it (at once, here)."""
        return None

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]

    def dispatch(self, run_id: str, events: Sequence[pb.RunEvent]) -> None:
        for sub in tuple(self._subs.get(run_id, ())):
            sub.deliver(events)

    async def publish(self, run_id: str, events: Sequence[pb.RunEvent]) -> None:
        metrics.EVENTS_WRITTEN.inc(len(events))
        self.dispatch(run_id, events)

    async def publish_many(self, batches: Sequence[tuple[str, Sequence[pb.RunEvent]]]) -> None:
        for run_id, events in batches:
            await self.publish(run_id, events)

    def watcher_count(self) -> int:
        return sum(len(subs) for subs in self._subs.values())


class RedisBus(LocalBus):
    """Publishes to Redis; one reader per process subscribes to the channels of the runs
    watched here, and only those: a replica nobody watches through reads nothing back."""

    def __init__(self, url: str, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        super().__init__()
        self._timeout_s = timeout_s
        self._redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._reader: asyncio.Task[None] | None = None
        self._outbox: collections.deque[tuple[str, Sequence[pb.RunEvent]]] = collections.deque()
        self._sender: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None  # the reader's, while it is connected
        self._confirmed: dict[str, asyncio.Event] = {}  # watched runs: Redis said subscribed
        self._commands: set[asyncio.Task[None]] = set()  # (un)subscribes in flight, kept alive

    def subscribe(self, run_id: str) -> Subscription:
        first = run_id not in self._subs
        sub = super().subscribe(run_id)
        if first:
            self._confirmed[run_id] = asyncio.Event()
            self._command("subscribe", run_id)
        return sub

    async def listening(self, sub: Subscription) -> None:
        confirmed = self._confirmed.get(sub.run_id)
        if confirmed is not None:
            with contextlib.suppress(TimeoutError):  # Redis slow or away: the watcher polls
                await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_WAIT_S)

    def unsubscribe(self, sub: Subscription) -> None:
        super().unsubscribe(sub)
        if sub.run_id not in self._subs and self._confirmed.pop(sub.run_id, None) is not None:
            self._command("unsubscribe", sub.run_id)

    def _command(self, name: str, run_id: str) -> None:
        """(Un)subscribe on the reader's connection; if it is down, the reader subscribes to
        every watched run when it is back."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        channel = CHANNEL_PREFIX + run_id

        async def send() -> None:
            if name == "subscribe":
                await pubsub.subscribe(channel)
            else:
                await pubsub.unsubscribe(channel)

        task = asyncio.create_task(send(), name=f"redis-{name}")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        task.add_done_callback(_quiet)

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="redis-bus-reader")

    async def close(self) -> None:
        if self._sender is not None:  # what was committed is still published
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sender, 5.0)
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        await self._redis.aclose()

    async def announce_keys_revoked(self) -> None:
        """Here at once; elsewhere through Redis. If Redis is away, the other replicas' cache
        entries still run out within tenancy.KEY_CACHE_S."""
        self._keys_revoked()
        try:  # bounded: a Redis that does not answer must not hold the revocation's answer
            await asyncio.wait_for(self._redis.publish(KEYS_CHANNEL, b""), ANNOUNCE_WAIT_S)
        except (aioredis.RedisError, OSError, TimeoutError) as error:
            log.warning("redis publish failed", extra={"action": "keys", "error": str(error)})

    async def publish(self, run_id: str, events: Sequence[pb.RunEvent]) -> None:
        await self.publish_many([(run_id, events)])

    async def publish_many(self, batches: Sequence[tuple[str, Sequence[pb.RunEvent]]]) -> None:
        """Queue the batches for Redis and return: the writer that committed them does not
        wait for the publish. One sender drains the queue in order, a pipeline per round."""
        batches = [(run_id, events) for run_id, events in batches if events]
        if not batches:
            return
        metrics.EVENTS_WRITTEN.inc(sum(len(events) for _, events in batches))
        if len(self._outbox) >= OUTBOX_LIMIT:
            # Redis cannot keep up: deliver here and drop; other replicas' watchers catch up
            # from the database (they poll on silence and on any gap).
            log.warning("redis outbox full", extra={"action": "bus"})
            for run_id, events in batches:
                self.dispatch(run_id, events)
            return
        self._outbox.extend(batches)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_outbox(), name="redis-bus-sender")

    async def _send_outbox(self) -> None:
        while self._outbox:
            batches = list(self._outbox)
            self._outbox.clear()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for run_id, events in batches:
                        payload = runs_pb2.WriteResponse(events=events).SerializeToString()
                        pipe.publish(CHANNEL_PREFIX + run_id, payload)
                    await pipe.execute()
            except (aioredis.RedisError, OSError) as error:
                # Watchers here still get them; the write itself already committed.
                log.warning("redis publish failed", extra={"action": "bus", "error": str(error)})
                for run_id, events in batches:
                    self.dispatch(run_id, events)

    async def _read_forever(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    listed = set(self._confirmed)
                    channels = [CHANNEL_PREFIX + run_id for run_id in listed]
                    await pubsub.subscribe(IDLE_CHANNEL, KEYS_CHANNEL, *channels)
                    self._pubsub = pubsub
                    # A run first watched, or left, while that subscribe was on its way: its
                    # command found no connection and was dropped (its watchers polled).
                    for run_id in set(self._confirmed) - listed:
                        self._command("subscribe", run_id)
                    for run_id in listed - set(self._confirmed):
                        self._command("unsubscribe", run_id)
                    await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis down: retry; watchers poll meanwhile.
                log.warning("redis bus reconnecting", extra={"action": "bus", "error": str(error)})
            finally:
                self._pubsub = None
                for confirmed in self._confirmed.values():
                    confirmed.clear()
            await asyncio.sleep(1.0)

    async def _listen(self, pubsub: PubSub) -> None:
        """Delivers what the reader's connection brings until it is gone: closed, or silent
        past a ping (raised as TimeoutError)."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            # its own wait, not the socket's timeout: a quiet channel is no failure
            message = await pubsub.get_message(timeout=self._timeout_s)
            if message is not None:
                heard = loop.time()
                self._deliver(message)
            elif loop.time() - heard >= 2 * self._timeout_s:
                raise TimeoutError(f"redis did not answer a ping within {self._timeout_s:g} s")
            else:
                await pubsub.ping()  # its answer comes as a message, and counts as heard

    def _deliver(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind not in ("message", "subscribe"):
            return  # a pong, an unsubscribe
        channel = message["channel"].decode()
        if channel == KEYS_CHANNEL:
            # Revoked, or subscribed anew after an outage that may have hidden a
            # revocation: every key is looked up again.
            self._keys_revoked()
            return
        run_id = channel.removeprefix(CHANNEL_PREFIX)
        if kind == "message":
            batch = runs_pb2.WriteResponse.FromString(message["data"])
            self.dispatch(run_id, batch.events)
        elif run_id in self._confirmed:
            self._confirmed[run_id].set()


def _quiet(task: asyncio.Task[None]) -> None:
    """A (un)subscribe that failed: the reader reconnects and subscribes afresh."""
    if not task.cancelled() and task.exception() is not None:
        log.warning(
            "redis subscribe failed", extra={"action": "bus", "error": str(task.exception())}
        )


def create_bus(redis_url: str | None, timeout_s: float = REDIS_TIMEOUT_S) -> LocalBus:
    return RedisBus(redis_url, timeout_s) if redis_url else LocalBus()

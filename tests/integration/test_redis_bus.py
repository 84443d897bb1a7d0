"""Live fan-out between runs replicas through Redis: a watcher on replica A hears, in order and
at once, what an engine writes through replica B. PostgreSQL only (replicas share a database)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata, internal_metadata
from nyxflow.client import AdminClient, RunsClient
from nyxflow.errors import FailedPrecondition, Unauthenticated
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.bus import CHANNEL_PREFIX, IDLE_CHANNEL, RedisBus, Subscription
from nyxflow_runs.tenancy import KEY_CACHE_S
from tests.support.databases import REDIS_URL, fresh_database, unavailable
from tests.support.eventually import eventually
from tests.support.inprocess import ADMIN_KEY, SECRET, Clients, clients, runs_service
from tests.support.workflows import chain, complete

pytestmark = [pytest.mark.pg, pytest.mark.redis]

# Replica A re-reads the database only every 30 s: anything faster came through Redis (and
# 10 s leaves room for a stall of a loaded machine).
SLOW_POLL_S = 30.0
LIVE_WITHIN_S = 10.0
# Well before B's cache entry of the key (KEY_CACHE_S, 5 s) runs out, with room for a stall.
REVOKED_WITHIN_S = 3.5


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (aioredis.RedisError, OSError) as error:
        await client.aclose()
        unavailable("Redis", error)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def pg_url(tmp_path: Path, redis_client: aioredis.Redis) -> AsyncIterator[str]:
    async with fresh_database("postgresql", tmp_path) as url:
        yield url


def draft(type_: str, **data: Any) -> pb.EventDraft:
    return pb.EventDraft(type=type_, data_json=json.dumps(data))


async def bus_readers(client: aioredis.Redis) -> int:
    """Replicas' bus readers connected to Redis (each holds the idle channel)."""
    return int(dict(await client.pubsub_numsub(IDLE_CHANNEL))[IDLE_CHANNEL.encode()])


async def both_subscribed(client: aioredis.Redis, readers_before: int) -> None:
    """Both replicas' bus readers are subscribed to Redis."""
    await eventually(
        lambda: bus_readers(client),
        lambda n: n >= readers_before + 2,
        timeout_s=5.0,
        what="both replicas subscribed to Redis",
    )


async def run_subscribers(client: aioredis.Redis, run_id: str) -> int:
    channel = CHANNEL_PREFIX + run_id
    return int(dict(await client.pubsub_numsub(channel))[channel.encode()])


def as_engine(api: Clients, tenant_id: str) -> RunsClient:
    return RunsClient(api.runs_channel, internal_metadata(SECRET, tenant_id))


async def next_event(stream: AsyncGenerator[pb.RunEvent, None], timeout_s: float) -> pb.RunEvent:
    async with asyncio.timeout(timeout_s):
        return await anext(stream)


async def test_a_watcher_on_one_replica_hears_writes_through_another_live(
    pg_url: str, redis_client: aioredis.Redis
) -> None:
    readers_before = await bus_readers(redis_client)
    async with (
        runs_service(pg_url, redis_url=REDIS_URL, watch_poll_s=SLOW_POLL_S) as a_settings,
        runs_service(pg_url, redis_url=REDIS_URL) as b_settings,
        clients(a_settings.runs_listen) as a,
        clients(b_settings.runs_listen) as b,
    ):
        await both_subscribed(redis_client, readers_before)
        workflow = await b.runs.create_workflow("fan-out", chain(1))
        run = await b.runs.create_run(workflow.id)
        engine_b = as_engine(b, run.tenant_id)
        claim = await engine_b.claim_run(run.id, "engine-b", 30.0)
        assert claim.won

        assert await run_subscribers(redis_client, run.id) == 0  # nobody watches it yet
        stream = a.runs.watch_run(run.id)
        try:
            first = await next_event(stream, LIVE_WITHIN_S)  # replayed from the database
            assert (first.seq, first.type) == (1, ev.RUN_STARTED)
            # Only A, where the watcher is, listens to the run: B reads nothing back.
            assert await run_subscribers(redis_client, run.id) == 1

            for n in range(5):
                (written,) = (
                    await engine_b.append_events(run.id, claim.token, [draft(ev.STEP_DELTA, n=n)])
                ).events
                live = await next_event(stream, LIVE_WITHIN_S)
                assert (live.seq, live.type, json.loads(live.data_json)) == (
                    written.seq,
                    ev.STEP_DELTA,
                    {"n": n},
                )
            batch = (
                await engine_b.append_events(
                    run.id, claim.token, [draft(ev.STEP_DELTA, n=n) for n in range(5, 9)]
                )
            ).events
            received = [await next_event(stream, LIVE_WITHIN_S) for _ in batch]
            assert [e.seq for e in received] == [e.seq for e in batch] == [7, 8, 9, 10]

            (terminal,) = await complete(engine_b, claim.run, claim.token)
            last = await next_event(stream, LIVE_WITHIN_S)
            assert (last.seq, last.type) == (terminal.seq, ev.RUN_COMPLETED)
            with pytest.raises(StopAsyncIteration):
                await next_event(stream, LIVE_WITHIN_S)
        finally:
            await stream.aclose()

        assert (await a.runs.get_run(run.id)).status == ev.COMPLETED
        # The watcher has gone: so has A's subscription to the run.
        await eventually(
            lambda: run_subscribers(redis_client, run.id),
            lambda n: n == 0,
            timeout_s=10.0,
            what="the run's channel unsubscribed",
        )


async def test_replicas_share_one_truth(pg_url: str) -> None:
    """Claims through both replicas at once start the run once; B's finish fences A's writes."""
    async with (
        runs_service(pg_url, redis_url=REDIS_URL) as a_settings,
        runs_service(pg_url, redis_url=REDIS_URL) as b_settings,
        clients(a_settings.runs_listen) as a,
        clients(b_settings.runs_listen) as b,
    ):
        run = await a.runs.create_run((await a.runs.create_workflow("one", chain(1))).id)
        engine_a, engine_b = (as_engine(c, run.tenant_id) for c in (a, b))

        claims = await asyncio.gather(
            *(
                engine.claim_run(run.id, f"e{i}", 30.0)
                for i in range(20)
                for engine in (engine_a, engine_b)
            )
        )

        winners = [c for c in claims if c.won]
        assert len(winners) == 1
        token = winners[0].token
        await complete(engine_b, winners[0].run, token)
        with pytest.raises(FailedPrecondition):
            await engine_a.append_events(run.id, token, [draft(ev.STEP_DELTA)])
        replay = [e async for e in a.runs.watch_run(run.id)]
        assert [(e.seq, e.type) for e in replay] == [(1, ev.RUN_STARTED), (2, ev.RUN_COMPLETED)]


async def test_a_key_revoked_on_one_replica_is_refused_at_once_on_another(
    pg_url: str, redis_client: aioredis.Redis
) -> None:
    """Replica B has the key cached (KEY_CACHE_S, 5 s); revoked through replica A, it is
    refused on B well before that cache entry would have run out."""
    readers_before = await bus_readers(redis_client)
    async with (
        runs_service(pg_url, redis_url=REDIS_URL) as a_settings,
        runs_service(pg_url, redis_url=REDIS_URL) as b_settings,
        clients(a_settings.runs_listen) as a,
        clients(b_settings.runs_listen) as b,
    ):
        await both_subscribed(redis_client, readers_before)
        admin = AdminClient(a.runs_channel, bearer_metadata(ADMIN_KEY))
        created = await admin.create_api_key("default", "laptop")
        on_b = b.as_key(created.secret)
        assert await on_b.list_workflows() == []  # now cached on B
        started = time.monotonic()

        await admin.revoke_api_key(created.key.id)

        async def refused() -> bool:
            try:
                await on_b.list_workflows()
            except Unauthenticated:
                return True
            return False

        await eventually(refused, bool, timeout_s=KEY_CACHE_S, interval_s=0.02)
        assert time.monotonic() - started < REVOKED_WITHIN_S, "refused only when the cache ran out"
        assert await b.runs.list_workflows() == []  # the other keys still work on B


async def test_a_run_first_watched_while_the_reader_subscribes_is_heard_live(
    redis_client: aioredis.Redis,
) -> None:
    """Its subscribe came while the reader's own was on its way (at every connect to Redis):
    it was dropped, and the run's watchers were left polling the database until the next
    reconnect."""
    bus = RedisBus(REDIS_URL)
    arrivals: list[Subscription] = []
    real_pubsub = bus._redis.pubsub

    def pubsub() -> Any:
        connection = real_pubsub()
        real_subscribe = connection.subscribe

        async def subscribe(*channels: Any) -> None:
            if not arrivals:  # a watcher arrives while the reader subscribes
                arrivals.append(bus.subscribe("late-run"))
            await real_subscribe(*channels)

        setattr(connection, "subscribe", subscribe)  # noqa: B010  # one connection's method
        return connection

    setattr(bus._redis, "pubsub", pubsub)  # noqa: B010
    await bus.start()
    try:
        while not arrivals:
            await asyncio.sleep(0.01)
        await bus.listening(arrivals[0])
        # Confirmed by Redis, not given up after SUBSCRIBE_WAIT_S: Redis holds the subscription.
        assert await run_subscribers(redis_client, "late-run") == 1, "Redis never confirmed it"
        run_event = pb.RunEvent(run_id="late-run", seq=1, type=ev.RUN_STARTED, data_json="{}")
        await redis_client.publish(
            CHANNEL_PREFIX + "late-run",
            runs_pb2.WriteResponse(events=[run_event]).SerializeToString(),
        )
        heard = await arrivals[0].next_batch(LIVE_WITHIN_S)
        assert heard is not None and [e.seq for e in heard] == [1]
    finally:
        await bus.close()

"""A key revoked while a call's lookup of it is under way is refused from then on: the
lookup read it valid, and put it back in the cache the revocation had just cleared. A stream
held with a key revoked or expired ends within a bound even when its run sends nothing: runs'
WatchRun, and the engine's Execute called directly (whose run goes on to its end)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata, internal_metadata
from nyxflow.client import AdminClient, EngineClient, RunsClient, open_channel
from nyxflow.errors import Unauthenticated
from nyxflow.v1 import admin_pb2
from nyxflow_engine.key_check import KEY_CHECK_S
from nyxflow_runs import migrate
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.store import Store
from nyxflow_runs.tenancy import Tenancy
from tests.support.inprocess import ADMIN_KEY, SECRET, Clients
from tests.support.workflows import chain

# The longest an idle stream of a refused key may go on: runs' silent interval in the tests
# (watch_poll_s 0.5), time for the call, and room for a stall of a loaded machine; still well
# before the key's cache entry runs out (KEY_CACHE_S, 5 s). Unchecked, it goes on for ever.
IDLE_BOUND_S = 3.5
# A key that expires this long after it is made: long enough to set its stream up on a loaded
# machine, short enough to wait out.
EXPIRES_IN_S = 2.5


class Call:
    """The one thing Tenancy reads of a call: its metadata."""

    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


async def test_a_key_revoked_during_its_lookup_is_refused_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await migrate.upgrade(engine)
    bus = LocalBus()
    store = Store(session_factory(engine), bus)
    tenancy = Tenancy(store, "secret", bus)
    try:
        await store.create_tenant("acme", "Acme", [])
        key, secret = await store.create_api_key("acme", "ci", None)
        read, answer = asyncio.Event(), asyncio.Event()
        lookup = store.tenant_for_key

        async def slow_lookup(api_key: str) -> tuple[str, float | None]:
            found = await lookup(api_key)
            read.set()
            await answer.wait()  # the loop busy with other calls, say
            return found

        monkeypatch.setattr(store, "tenant_for_key", slow_lookup)
        in_flight = asyncio.create_task(tenancy.tenant_of(Call(secret)))
        await read.wait()
        monkeypatch.setattr(store, "tenant_for_key", lookup)
        await store.revoke_api_key(key.id)  # as the Admin service's RevokeApiKey does
        await tenancy.key_revoked()
        answer.set()
        await in_flight  # it began before the revocation: it may pass

        with pytest.raises(Unauthenticated):
            await tenancy.tenant_of(Call(secret))
    finally:
        await store.close()
        await engine.dispose()


async def tenant_key(api: Clients, expires_at: float = 0.0) -> admin_pb2.CreateApiKeyResponse:
    admin = AdminClient(api.runs_channel, bearer_metadata(ADMIN_KEY))
    slug = f"t-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(slug)
    return await admin.create_api_key(slug, "ci", expires_at)


async def ended_within(stream: Awaitable[object], since: float) -> float:
    """How long after `since` the stream ended; it must end UNAUTHENTICATED."""
    with pytest.raises(Unauthenticated):
        await asyncio.wait_for(stream, 10)
    return time.monotonic() - since


async def idle_watch(api: Clients, secret: str) -> asyncio.Task[None]:
    """A WatchRun, with `secret`, of a pending run nothing starts: no batch ever comes."""
    client = api.as_key(secret)
    workflow = await client.create_workflow("idle", chain(1))
    run = await client.create_run(workflow.id)

    async def read() -> None:
        async for events in client.watch_run_batches(run.id):
            assert not events, "a pending run nothing starts sends nothing"

    watch = asyncio.ensure_future(read())
    await asyncio.sleep(0.3)  # in its live tail
    assert not watch.done()
    return watch


async def test_an_idle_watch_of_a_revoked_key_ends(runs: Clients) -> None:
    key = await tenant_key(runs)
    watch = await idle_watch(runs, key.secret)
    admin = AdminClient(runs.runs_channel, bearer_metadata(ADMIN_KEY))
    await admin.revoke_api_key(key.key.id)
    assert await ended_within(watch, time.monotonic()) < IDLE_BOUND_S


async def test_an_idle_watch_of_an_expired_key_ends(runs: Clients) -> None:
    key = await tenant_key(runs, expires_at=time.time() + EXPIRES_IN_S)
    expires = time.monotonic() + EXPIRES_IN_S
    watch = await idle_watch(runs, key.secret)
    assert await ended_within(watch, expires) < IDLE_BOUND_S


@pytest.mark.parametrize("refusal", ["revoked", "expired"])
async def test_a_direct_execute_of_a_refused_key_ends_and_its_run_goes_on(
    api: Clients, engine_addr: str, refusal: str
) -> None:
    """A gRPC client streaming Execute itself (no gateway to check its key): the engine ends
    its stream UNAUTHENTICATED within a key check, and the run executes to its end."""
    expires_at = time.time() + EXPIRES_IN_S if refusal == "expired" else 0.0
    key = await tenant_key(api, expires_at=expires_at)
    client = api.as_key(key.secret)
    # 5 steps of 30 tokens 50 ms apart: about 7.5 s, past every bound here.
    workflow = await client.create_workflow("long", chain(5, tokens=30, token_delay_ms=50))
    run = await client.create_run(workflow.id)
    seen: list[str] = []
    async with open_channel(engine_addr) as channel:
        stream = EngineClient(channel, bearer_metadata(key.secret)).execute_batches(run.id)

        async def read() -> None:
            async for events in stream:
                seen.extend(e.type for e in events)

        reading = asyncio.ensure_future(read())
        async with asyncio.timeout(10):
            while len(seen) < 3:
                await asyncio.sleep(0.02)
        if refusal == "revoked":
            admin = AdminClient(api.runs_channel, bearer_metadata(ADMIN_KEY))
            await admin.revoke_api_key(key.key.id)
            since = time.monotonic()
        else:
            since = time.monotonic() + max(0.0, key.key.expires_at - time.time())
        # A key check, the call, and room for a stall of a loaded machine; unchecked, the
        # stream goes on to the run's end.
        assert await ended_within(reading, since) < KEY_CHECK_S + 2.5
    assert ev.RUN_COMPLETED not in seen

    engine = RunsClient(api.runs_channel, internal_metadata(SECRET, run.tenant_id))
    async with asyncio.timeout(20):
        rest = [e.type async for e in engine.watch_run(run.id, 0)]
    assert rest[-1] == ev.RUN_COMPLETED

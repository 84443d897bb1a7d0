"""A key revoked while a call's lookup of it is under way is refused from then on: the
lookup read it valid, and put it back in the cache the revocation had just cleared. A stream
held with a key revoked or expired ends within a bound even when its run sends nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient
from nyxflow.errors import Unauthenticated
from nyxflow.v1 import admin_pb2
from nyxflow_runs import migrate
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.store import Store
from nyxflow_runs.tenancy import Tenancy
from tests.support.inprocess import ADMIN_KEY, Clients
from tests.support.workflows import chain

# The longest an idle stream of a refused key may go on: runs' silent interval in the tests
# (watch_poll_s 0.5), and time for the call.
IDLE_BOUND_S = 1.5


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
    key = await tenant_key(runs, expires_at=time.time() + 1.5)
    expires = time.monotonic() + 1.5
    watch = await idle_watch(runs, key.secret)
    assert await ended_within(watch, expires) < IDLE_BOUND_S

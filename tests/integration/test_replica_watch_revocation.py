"""A key revoked on one runs replica ends the streams another replica holds with it, even when
no bus tells that replica (no Redis): each held key is looked up again once it is KEY_CACHE_S
old, once per key per interval however many streams hold it and however busy they are."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, open_channel
from nyxflow.errors import Unauthenticated
from nyxflow_runs import migrate, tenancy
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.store import Store
from nyxflow_runs.tenancy import KEY_CACHE_S, Tenancy
from tests.integration.test_key_revocation import Call, ended_within, idle_watch, tenant_key
from tests.support.inprocess import ADMIN_KEY, clients, runs_service


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # replicas share it
async def test_a_watch_on_another_replica_ends_after_its_key_is_revoked(
    database_url: str,
) -> None:
    async with (
        runs_service(database_url) as one,
        runs_service(database_url, migrate_on_start=False) as two,  # no Redis: no bus between
        clients(one.runs_listen) as api_one,
        clients(two.runs_listen) as api_two,
    ):
        key = await tenant_key(api_one)
        watch = await idle_watch(api_two, key.secret)  # held by replica two
        async with open_channel(one.runs_listen) as channel:  # revoked through replica one
            await AdminClient(channel, bearer_metadata(ADMIN_KEY)).revoke_api_key(key.key.id)
        revoked = time.monotonic()
        try:
            # Its lookup KEY_CACHE_S on, then a silence (watch_poll_s 0.5), the call, and room
            # for a stall of a loaded machine; a watch nobody tells goes on for ever.
            assert await ended_within(watch, revoked) < KEY_CACHE_S + 3.5
        finally:
            watch.cancel()


async def test_held_keys_are_looked_up_once_an_interval_not_at_each_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval_s = 0.3
    monkeypatch.setattr(tenancy, "KEY_CACHE_S", interval_s)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await migrate.upgrade(engine)
    bus = LocalBus()
    store = Store(session_factory(engine), bus)
    keys = Tenancy(store, "secret", bus)  # told of nothing: revocations happen elsewhere
    try:
        await store.create_tenant("acme", "Acme", [])
        key, secret = await store.create_api_key("acme", "ci", None)
        lookups = 0
        lookup = store.tenant_for_key

        async def counted(api_key: str) -> tuple[str, float | None]:
            nonlocal lookups
            lookups += 1
            return await lookup(api_key)

        monkeypatch.setattr(store, "tenant_for_key", counted)
        holds = [(await keys.hold_key(Call(secret)))[1] for _ in range(3)]  # 3 streams
        # Three busy streams, a check per batch, 1 ms apart, for 5 intervals at least (and
        # longer if a loaded machine stalled the loop before the lookups came round).
        start = time.monotonic()
        while time.monotonic() - start < 5 * interval_s or (
            lookups < 3 and time.monotonic() - start < 10
        ):
            for hold in holds:
                hold.check()
            await asyncio.sleep(0.001)
        intervals = (time.monotonic() - start) / interval_s
        # the first hold's, then about one an interval (a lookup at each check makes thousands)
        assert 3 <= lookups <= 3 + intervals, (lookups, intervals)

        await store.revoke_api_key(key.id)  # on another replica: no bus says so here
        revoked = time.monotonic()
        with pytest.raises(Unauthenticated):  # at the next lookup, an interval or so on
            while time.monotonic() - revoked < 10:
                for hold in holds:
                    hold.check()
                await asyncio.sleep(0.01)
        for hold in holds:
            keys.release(hold)
    finally:
        await store.close()
        await engine.dispose()

"""A key revoked while a call's lookup of it is under way is refused from then on: the
lookup read it valid, and put it back in the cache the revocation had just cleared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nyxflow.errors import Unauthenticated
from nyxflow_runs import migrate
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.store import Store
from nyxflow_runs.tenancy import Tenancy


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

"""A key's expiry is judged by the database's clock alone: the lookup takes a key by it, and
a stream's hold counts down the time it had left then, on this host's monotonic clock."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nyxflow.errors import Unauthenticated
from nyxflow_runs import migrate, tenancy
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.store import Store
from nyxflow_runs.tenancy import Tenancy

LEFT_S = 300.0  # the key's time left, by the database's clock
SKEW_S = 600.0  # the runs host's wall clock, this far ahead of the database's


async def test_a_hold_takes_a_key_until_the_time_the_database_gave_it_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's clock 10 minutes ahead: a key with 5 minutes left was taken by every unary
    call, yet each WatchRun stream opened with it ended at its first batch."""
    started = time.monotonic()
    clock = SimpleNamespace(time=lambda: time.time() + SKEW_S, monotonic=lambda: started)
    monkeypatch.setattr(tenancy, "time", clock)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await migrate.upgrade(engine)
    bus = LocalBus()
    store = Store(session_factory(engine), bus)
    try:
        await store.create_tenant("acme", "Acme", [])
        _, secret = await store.create_api_key("acme", "ci", time.time() + LEFT_S)
        call = SimpleNamespace(invocation_metadata=lambda: (("authorization", f"Bearer {secret}"),))
        _, hold = await Tenancy(store, "secret", bus).hold_key(call)
        hold.check()  # taken: the database gives it 5 minutes
        clock.monotonic = lambda: started + LEFT_S - 30
        hold.check()
        clock.monotonic = lambda: started + LEFT_S + 30
        with pytest.raises(Unauthenticated):
            hold.check()  # and refused once they have run out
    finally:
        await store.close()
        await engine.dispose()

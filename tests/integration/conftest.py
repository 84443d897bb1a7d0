"""Fixtures of the runs service's integration tests: a client on the embedded service and a
direct view of the same database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.direct import Direct, direct
from tests.support.fake_providers import FakeProviders, fake_providers
from tests.support.inprocess import Clients, clients
from tests.support.provider_runs import engine_on_fake


@pytest.fixture
async def runs(runs_addr: str) -> AsyncIterator[Clients]:
    async with clients(runs_addr) as c:
        yield c


@pytest.fixture
async def db(runs_addr: str, database_url: str) -> AsyncIterator[Direct]:
    """The same database, read without the service (runs_addr first: it migrates)."""
    async with direct(database_url) as d:
        yield d


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviders]:
    """A loopback server speaking each provider's wire format, for the SDKs' base URLs."""
    async with fake_providers() as server:
        yield server


@pytest.fixture
async def fake_api(runs_addr: str, fake: FakeProviders) -> AsyncIterator[Clients]:
    """Runs plus an engine whose providers all point at the fake server."""
    async with engine_on_fake(runs_addr, fake.base_url) as c:
        yield c

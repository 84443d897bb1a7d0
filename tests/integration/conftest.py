"""Fixtures of the runs service's integration tests: a client on the embedded service and a
direct view of the same database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.direct import Direct, direct
from tests.support.inprocess import Clients, clients


@pytest.fixture
async def runs(runs_addr: str) -> AsyncIterator[Clients]:
    async with clients(runs_addr) as c:
        yield c


@pytest.fixture
async def db(runs_addr: str, database_url: str) -> AsyncIterator[Direct]:
    """The same database, read without the service (runs_addr first: it migrates)."""
    async with direct(database_url) as d:
        yield d

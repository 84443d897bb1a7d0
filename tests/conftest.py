"""Fixtures shared by every tier: databases on both backends, embedded services, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.databases import BACKENDS, fresh_database
from tests.support.inprocess import Clients, clients, engine_service, runs_service


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def runs_addr(database_url: str) -> AsyncIterator[str]:
    async with runs_service(database_url) as settings:
        yield settings.runs_listen


@pytest.fixture
async def engine_addr(runs_addr: str) -> AsyncIterator[str]:
    async with engine_service(runs_addr) as settings:
        yield settings.engine_listen


@pytest.fixture
async def api(runs_addr: str, engine_addr: str) -> AsyncIterator[Clients]:
    async with clients(runs_addr, engine_addr) as c:
        yield c

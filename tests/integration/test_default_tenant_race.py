"""Runs replicas starting together on a new PostgreSQL database: each creates the default
tenant and registers its key at start; both must start, and there is one tenant."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import delete, func, select

from nyxflow_runs import migrate
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.models import ApiKey, Tenant
from nyxflow_runs.store import Store
from tests.support.databases import fresh_database

ROUNDS = 5  # each round starts from no tenant: the two reads meet in most of them


async def test_two_replicas_creating_the_default_tenant_at_once(tmp_path: Path) -> None:
    async with fresh_database("postgresql", tmp_path) as url:
        engines = [create_engine(url) for _ in range(2)]  # a pool each, as two replicas
        stores = [Store(session_factory(e), LocalBus()) for e in engines]
        try:
            await migrate.upgrade(engines[0])
            for engine in engines:  # connected already, as a started replica is
                async with engine.connect() as connection:
                    await connection.execute(select(1))
            for _ in range(ROUNDS):
                async with engines[0].begin() as connection:
                    await connection.execute(delete(ApiKey))
                    await connection.execute(delete(Tenant))
                started = await asyncio.gather(
                    *(store.ensure_default_tenant("a-key") for store in stores),
                    return_exceptions=True,
                )
                failed = [s for s in started if isinstance(s, BaseException)]
                assert failed == [], repr(failed[0])[:400]
                async with engines[0].connect() as connection:
                    tenants = (await connection.execute(select(Tenant.id))).scalars().all()
                    keys = await connection.scalar(select(func.count()).select_from(ApiKey))
                assert [s[0] for s in started if isinstance(s, tuple)] == list(tenants) * 2
                assert keys == 1
        finally:
            for store in stores:
                await store.close()
            for engine in engines:
                await engine.dispose()

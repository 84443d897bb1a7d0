"""Direct access to a runs database from a test: a Store on its own engine, extra tenants, and
reads that do not go through the service under test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nyxflow.auth import hash_key
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.clock import db_now
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.models import ApiKey, Run, Tenant
from nyxflow_runs.store import Store


@dataclass(frozen=True)
class NewTenant:
    id: str
    api_key: str


@dataclass
class Direct:
    """A second way into the same database, for setup and for checking what was persisted."""

    store: Store
    sessions: async_sessionmaker[AsyncSession]

    async def add_tenant(self, slug: str) -> NewTenant:
        api_key = f"key-{slug}-{secrets.token_hex(8)}"
        async with self.sessions.begin() as session:
            tenant = Tenant(slug=slug, name=slug.title())
            session.add(tenant)
            await session.flush()
            session.add(ApiKey(tenant_id=tenant.id, name=slug, key_hash=hash_key(api_key)))
            return NewTenant(tenant.id, api_key)

    async def events(self, tenant_id: str, run_id: str) -> list[pb.RunEvent]:
        """Every persisted event of a run, in seq order, straight from the database."""
        return await self.store.events_after(tenant_id, run_id, 0, limit=100_000)

    async def expired_leases(self, run_ids: list[str]) -> int:
        """How many of these runs are running with a lease expired by the database's clock."""
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Run)
                .where(
                    Run.id.in_(run_ids),
                    Run.status == "running",
                    Run.lease_expires_at < db_now(),
                )
            )
        return int(count or 0)


@asynccontextmanager
async def direct(database_url: str) -> AsyncIterator[Direct]:
    """The database must already be migrated (start a runs service on it first)."""
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    store = Store(sessions, LocalBus())
    try:
        yield Direct(store, sessions)
    finally:
        await store.close()
        await engine.dispose()

"""A project moved to another tenant while the old tenant starts a run of one of its
workflows (PostgreSQL): the run waits for the move and is refused; it was made the old
tenant's under the moved workflow, and claiming it handed the old tenant the new one's steps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nyxflow.errors import NotFound
from nyxflow_runs import migrate
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.models import Run, Step, Workflow
from nyxflow_runs.store import Store
from nyxflow_runs.store.admin import Admin
from tests.support.databases import fresh_database


@asynccontextmanager
async def stored(tmp_path: Path) -> AsyncIterator[tuple[Store, async_sessionmaker[AsyncSession]]]:
    async with fresh_database("postgresql", tmp_path) as url:
        engine = create_engine(url)
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        store = Store(sessions, LocalBus())
        try:
            yield store, sessions
        finally:
            await store.close()
            await engine.dispose()


async def test_a_run_started_during_its_project_s_move_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stored(tmp_path) as (store, sessions):
        old = await store.create_tenant("old-team", "Old", [])
        new = await store.create_tenant("new-team", "New", [])
        project = await store.create_project(old.id, "shop")
        async with sessions.begin() as session:
            workflow = Workflow(tenant_id=old.id, project_id=project.id, name="wf")
            session.add(workflow)
            await session.flush()
            session.add(_step(old.id, workflow.id))
            workflow_id = workflow.id

        moved, commit = asyncio.Event(), asyncio.Event()
        move_rows = Admin._move

        async def move_then_wait(self: Admin, *args: Any) -> dict[str, int]:
            counts = await move_rows(self, *args)
            moved.set()
            await commit.wait()  # the rows are moved; the transaction not yet committed
            return counts

        monkeypatch.setattr(Admin, "_move", move_then_wait)
        moving = asyncio.create_task(
            store.move_project(project.id, new.id, dry_run=False, on_conflict="fail")
        )
        await asyncio.wait_for(moved.wait(), 10)
        starting = asyncio.create_task(store.create_run(old.id, workflow_id))
        await asyncio.sleep(0.5)
        assert not starting.done()  # it waits for the move
        commit.set()
        assert (await moving).moved

        with pytest.raises(NotFound):
            await starting
        async with sessions() as session:
            runs = (await session.scalars(select(Run.tenant_id))).all()
        assert runs == []
        assert (await store.create_run(new.id, workflow_id)).tenant_id == new.id


async def test_a_claim_reads_only_its_own_tenant_s_steps(tmp_path: Path) -> None:
    """Were a run ever left with another tenant than its workflow's steps, its claim reads
    none of them."""
    async with stored(tmp_path) as (store, sessions):
        mine = await store.create_tenant("mine", "Mine", [])
        theirs = await store.create_tenant("theirs", "Theirs", [])
        async with sessions.begin() as session:
            workflow = Workflow(tenant_id=mine.id, name="wf")
            session.add(workflow)
            await session.flush()
            session.add(_step(mine.id, workflow.id))
            workflow_id = workflow.id
        run = await store.create_run(mine.id, workflow_id)
        async with sessions.begin() as session:  # the steps become another tenant's
            await session.execute(update(Step).values(tenant_id=theirs.id))

        claim = await store.claim_run(mine.id, run.id, "engine-x", 30)

        assert claim.won and [s.prompt for s in claim.run.steps] == []


def _step(tenant_id: str, workflow_id: str) -> Step:
    return Step(tenant_id=tenant_id, workflow_id=workflow_id, position=0, name="plan",
                kind="llm", prompt="PRIVATE PROMPT", max_tokens=100, params={}, config={},
                alternatives_out=[])  # fmt: skip

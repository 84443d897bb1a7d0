"""A project moved to another tenant while the old tenant starts a run of one of its
workflows (PostgreSQL): the run waits for the move and is refused; it was made the old
tenant's under the moved workflow, and claiming it handed the old tenant the new one's steps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nyxflow.errors import NotFound
from nyxflow.v1 import runs_pb2
from nyxflow_runs import migrate
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.models import (
    Base,
    Project,
    ProjectNote,
    Repository,
    Run,
    Step,
    Workflow,
    WorkflowInsight,
)
from nyxflow_runs.store import Store, projects
from nyxflow_runs.store.admin import Admin, MoveReport
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


WRITES = ["run", "note", "repository", "insight", "pipeline", "duplicate", "create_workflow"]


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_under_a_moving_project_waits_for_the_move_and_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """Each write under a project or one of its workflows, by the old tenant while the move
    is under way: it read the parent as the old tenant's, and its row stayed the old tenant's
    under the new tenant's project (a run whose claim handed the old tenant the new one's
    steps, a note nobody could see, a repository the old tenant still ran pipelines on, a
    workflow and its run)."""
    async with stored(tmp_path) as (store, sessions):
        old = await store.create_tenant("old-team", "Old", [])
        new = await store.create_tenant("new-team", "New", [])
        project = await store.create_project(old.id, "shop")
        repo = await store.add_repository(old.id, project.id, "acme", "shop", str(tmp_path))
        workflow_id = await _workflow(sessions, old.id, project.id)
        commit, moving = await _paused_move(store, monkeypatch, project.id, new.id)

        doing: Coroutine[Any, Any, Any]
        if write == "run":
            doing = store.create_run(old.id, workflow_id)
        elif write == "note":
            doing = store.add_project_note(old.id, project.id, "secret plan")
        elif write == "repository":
            doing = store.add_repository(old.id, project.id, "acme", "api", str(tmp_path))
        elif write == "insight":
            doing = store.add_workflow_insight(old.id, workflow_id, "insight")
        elif write == "pipeline":
            request = runs_pb2.StartPipelineRequest(repository_id=repo.id, pipeline="code-analysis")
            doing = store.start_pipeline(old.id, request, [], {})
        elif write == "duplicate":
            doing = store.duplicate_workflow(old.id, workflow_id, "")
        else:
            doing = store.create_workflow(old.id, "wf2", [], False, (), project.id)
        writing = asyncio.create_task(doing)
        await asyncio.sleep(0.5)
        assert not writing.done()  # it waits for the move
        commit.set()
        assert (await moving).moved

        with pytest.raises(NotFound):
            await writing
        assert await _strays(sessions, project.id, new.id) == []
        assert (await store.create_run(new.id, workflow_id)).tenant_id == new.id


async def test_a_write_that_holds_its_parents_first_is_moved_along(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duplicate that holds its project and workflow when the move begins: the move waits
    for it, then takes the copy along with the rest."""
    async with stored(tmp_path) as (store, sessions):
        old = await store.create_tenant("old-team", "Old", [])
        new = await store.create_tenant("new-team", "New", [])
        project = await store.create_project(old.id, "shop")
        workflow_id = await _workflow(sessions, old.id, project.id)
        held, go_on = asyncio.Event(), asyncio.Event()
        hold_then_wait = _then_wait(projects.held_under_project, held, go_on)
        monkeypatch.setattr("nyxflow_runs.store.workflows.held_under_project", hold_then_wait)
        duplicating = asyncio.create_task(store.duplicate_workflow(old.id, workflow_id, "copy"))
        await asyncio.wait_for(held.wait(), 10)
        moving = asyncio.create_task(
            store.move_project(project.id, new.id, dry_run=False, on_conflict="fail")
        )
        await asyncio.sleep(0.5)
        assert not moving.done()  # it waits for the duplicate
        go_on.set()
        copy = await asyncio.wait_for(duplicating, 10)
        report = await asyncio.wait_for(moving, 10)

        assert report.moved and report.counts["workflows"] == 2
        assert (await store.get_workflow(new.id, copy.id)).name == "copy"
        assert await _strays(sessions, project.id, new.id) == []


async def test_a_note_added_to_an_empty_project_being_replaced_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """replace_empty deletes the target tenant's empty project of the same name. A note
    added to it after the move found it empty was deleted with it, though its request had
    succeeded."""
    async with stored(tmp_path) as (store, sessions):
        old = await store.create_tenant("old-team", "Old", [])
        new = await store.create_tenant("new-team", "New", [])
        project = await store.create_project(old.id, "shop")
        empty = await store.create_project(new.id, "shop")
        counted, go_on = asyncio.Event(), asyncio.Event()
        count_then_wait = _then_wait(Admin._conflicts, counted, go_on)
        monkeypatch.setattr(Admin, "_conflicts", staticmethod(count_then_wait))
        moving = asyncio.create_task(
            store.move_project(project.id, new.id, dry_run=False, on_conflict="replace_empty")
        )
        await asyncio.wait_for(counted.wait(), 10)
        noting = asyncio.create_task(store.add_project_note(new.id, empty.id, "keep me"))
        await asyncio.sleep(0.5)
        go_on.set()
        assert (await moving).moved

        with pytest.raises(NotFound):  # it waited for the move, and the project is gone
            await noting
        async with sessions() as session:
            assert await session.get(Project, empty.id) is None


def _then_wait(
    call: Any, reached: asyncio.Event, go_on: asyncio.Event
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """`call`, which then says it got there and waits until the test lets it go on."""

    async def then_wait(*args: Any) -> Any:
        result = await call(*args)
        reached.set()
        await go_on.wait()
        return result

    return then_wait


async def _workflow(sessions: async_sessionmaker[AsyncSession], tenant: str, project: str) -> str:
    async with sessions.begin() as session:
        workflow = Workflow(tenant_id=tenant, project_id=project, name="wf")
        session.add(workflow)
        await session.flush()
        session.add(_step(tenant, workflow.id))
        return workflow.id


async def _paused_move(
    store: Store, monkeypatch: pytest.MonkeyPatch, project_id: str, to_tenant: str
) -> tuple[asyncio.Event, asyncio.Task[MoveReport]]:
    """The move started, its rows moved, its commit held until the event is set."""
    moved, commit = asyncio.Event(), asyncio.Event()
    move_rows = Admin._move

    async def move_then_wait(self: Admin, *args: Any) -> dict[str, int]:
        counts = await move_rows(self, *args)
        moved.set()
        await commit.wait()  # the rows are moved; the transaction not yet committed
        return counts

    monkeypatch.setattr(Admin, "_move", move_then_wait)
    moving = asyncio.create_task(
        store.move_project(project_id, to_tenant, dry_run=False, on_conflict="fail")
    )
    await asyncio.wait_for(moved.wait(), 10)
    return commit, moving


async def _strays(
    sessions: async_sessionmaker[AsyncSession], project_id: str, tenant: str
) -> list[tuple[str, str]]:
    """Rows under the project that are not `tenant`'s."""
    workflows_of = select(Workflow.id).where(Workflow.project_id == project_id)
    under: list[tuple[type[Base], Any]] = [
        (Project, Project.id == project_id),
        (ProjectNote, ProjectNote.project_id == project_id),
        (Repository, Repository.project_id == project_id),
        (Workflow, Workflow.project_id == project_id),
        (Step, Step.workflow_id.in_(workflows_of)),
        (WorkflowInsight, WorkflowInsight.workflow_id.in_(workflows_of)),
        (Run, Run.workflow_id.in_(workflows_of)),
    ]
    strays = []
    async with sessions() as session:
        for model, where in under:
            for row in (await session.scalars(select(model).where(where))).all():
                if row.tenant_id != tenant:  # type: ignore[attr-defined]
                    strays.append((model.__tablename__, row.id))  # type: ignore[attr-defined]
    return strays


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

"""Projects, their repositories and notes, and workflow insights: all tenant-scoped."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow.errors import AlreadyExists, NotFound
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.models import Project, ProjectNote, Repository, Workflow, WorkflowInsight
from nyxflow_runs.store.base import StoreBase
from nyxflow_runs.store.paging import PageEnd

MAX_PROJECTS = 500
# A project's notes (up to 100,000 characters each, as many as were added) went whole into
# GetProject, and every project's into ListProjects' one answer: 340 long notes in one project
# passed the 32 MiB message limit, and the whole tenant's project list failed. GetProject
# gives the newest notes whole, as many as NOTES_PER_READ characters hold (each note weighing
# NOTE_OVERHEAD more, for its ids); ListProjects the newest NOTES_PER_LIST, cut to
# NOTE_PREVIEW characters. The rest are counted (Project.notes_left_out), and read page by page
# with ListProjectNotes.
NOTES_PER_READ = 1_000_000
NOTE_OVERHEAD = 100
NOTES_PER_LIST = 3
NOTE_PREVIEW = 300
CUT = "…"

UnderProject = TypeVar("UnderProject", Workflow, Repository)


async def held_project(session: AsyncSession, tenant_id: str, project_id: str) -> Project | None:
    """The tenant's project, held FOR SHARE until the transaction ends (PostgreSQL; SQLite
    runs one transaction at a time). A write under the project takes it first: a move of the
    project to another tenant holds it FOR UPDATE, so the write waits for the move, then reads
    the project again and finds it another tenant's. Read unlocked, the project still looked
    the writer's, and the row it added stayed the old tenant's under the moved project."""
    return await session.scalar(
        select(Project)
        .where(Project.id == project_id, Project.tenant_id == tenant_id)
        .with_for_update(read=True)
    )


async def held_under_project(
    session: AsyncSession, model: type[UnderProject], tenant_id: str, row_id: str
) -> UnderProject | None:
    """The tenant's workflow or repository, held FOR SHARE with its project: the project
    first, in the order a move takes them (project, then its workflows), or the two would
    deadlock."""
    mine = (model.id == row_id, model.tenant_id == tenant_id)
    project_id = await session.scalar(select(model.project_id).where(*mine))
    if project_id is not None and await held_project(session, tenant_id, project_id) is None:
        return None
    return await session.scalar(select(model).where(*mine).with_for_update(read=True))


class Projects(StoreBase):
    async def create_project(self, tenant_id: str, name: str) -> runs_pb2.Project:
        try:
            async with self._scoped(tenant_id, write=True) as session:
                project = Project(name=name)
                session.add(project)
                await session.flush()
                return convert.project(project)
        except IntegrityError:
            raise AlreadyExists(f"a project named {name!r} exists", field="name") from None

    async def get_project(self, tenant_id: str, project_id: str) -> runs_pb2.Project:
        async with self._scoped(tenant_id) as session:
            project = await self._project(session, project_id)
            return await self._project_pb(session, project, listed=False)

    async def list_projects(self, tenant_id: str) -> list[runs_pb2.Project]:
        async with self._scoped(tenant_id) as session:
            rows = await session.scalars(select(Project).order_by(Project.name).limit(MAX_PROJECTS))
            return [await self._project_pb(session, p, listed=True) for p in rows.all()]

    async def list_project_notes(
        self, tenant_id: str, project_id: str, limit: int, after: PageEnd | None = None
    ) -> tuple[list[runs_pb2.ProjectNote], PageEnd | None]:
        """A page of the project's notes, newest first, older than `after` (the previous page's
        end): at most `limit`, as many as NOTES_PER_READ characters hold (at least one), and
        where the next page begins (None: no older note)."""
        async with self._scoped(tenant_id) as session:
            await self._project(session, project_id)
            notes, total = await _notes_within(session, project_id, after, limit)
        more = PageEnd(notes[-1].created_at, notes[-1].id) if total > len(notes) else None
        return [convert.note(n) for n in notes], more

    async def add_repository(
        self, tenant_id: str, project_id: str, owner: str, repo: str, path: str
    ) -> runs_pb2.Repository:
        try:
            async with self._scoped(tenant_id, write=True) as session:
                await self._held_project(session, tenant_id, project_id)
                row = Repository(project_id=project_id, owner=owner, repo=repo, path=path)
                session.add(row)
                await session.flush()
                return convert.repository(row)
        except IntegrityError:
            raise AlreadyExists(f"repository {owner}/{repo} exists", field="repo") from None

    async def add_project_note(
        self, tenant_id: str, project_id: str, text: str
    ) -> runs_pb2.ProjectNote:
        async with self._scoped(tenant_id, write=True) as session:
            await self._held_project(session, tenant_id, project_id)
            note = ProjectNote(project_id=project_id, text=text)
            session.add(note)
            await session.flush()
            return convert.note(note)

    async def add_workflow_insight(
        self, tenant_id: str, workflow_id: str, text: str
    ) -> runs_pb2.WorkflowInsight:
        async with self._scoped(tenant_id, write=True) as session:
            if await held_under_project(session, Workflow, tenant_id, workflow_id) is None:
                raise NotFound(f"workflow {workflow_id} not found")
            insight = WorkflowInsight(workflow_id=workflow_id, text=text)
            session.add(insight)
            await session.flush()
            return convert.insight(insight)

    @staticmethod
    async def _held_project(session: AsyncSession, tenant_id: str, project_id: str) -> Project:
        project = await held_project(session, tenant_id, project_id)
        if project is None:
            raise NotFound(f"project {project_id} not found")
        return project

    @staticmethod
    async def _project(session: AsyncSession, project_id: str) -> Project:
        # No tenant in the where: the scoped session adds it.
        project = await session.scalar(select(Project).where(Project.id == project_id))
        if project is None:
            raise NotFound(f"project {project_id} not found")
        return project

    @staticmethod
    async def _project_pb(
        session: AsyncSession, project: Project, *, listed: bool
    ) -> runs_pb2.Project:
        repositories = await session.scalars(
            select(Repository)
            .where(Repository.project_id == project.id)
            .order_by(Repository.owner, Repository.repo)
        )
        workflows = await session.scalars(
            select(Workflow.id).where(Workflow.project_id == project.id).order_by(Workflow.id)
        )
        answer = convert.project(project, repositories.all(), workflows.all())
        if listed:
            await _note_previews(session, answer)
        else:
            await _newest_notes(session, answer)
        return answer


NEWEST = (ProjectNote.created_at.desc(), ProjectNote.id.desc())


async def _newest_notes(session: AsyncSession, answer: runs_pb2.Project) -> None:
    rows, total = await _notes_within(session, answer.id)
    answer.notes.extend(convert.note(note) for note in rows)
    answer.notes_left_out = total - len(rows)


async def _notes_within(
    session: AsyncSession, project_id: str, after: PageEnd | None = None, limit: int | None = None
) -> tuple[list[ProjectNote], int]:
    """The newest notes (older than `after`), whole, at most `limit` and as many as
    NOTES_PER_READ holds (at least one), with how many of them the budget and the limit were
    taken from: every note from `after` on, or, with a limit, at most limit + 1 (a page reads
    the notes it may give and one more, not every older note: paging through them all was
    quadratic). The budget is summed in the database, which sends only those."""
    candidates = select(
        ProjectNote.id,
        ProjectNote.created_at,
        (func.length(ProjectNote.text) + NOTE_OVERHEAD).label("weight"),
    ).where(ProjectNote.project_id == project_id)
    if after is not None:  # (created_at, id) as ordered: ties neither skipped nor repeated
        candidates = candidates.where(
            tuple_(ProjectNote.created_at, ProjectNote.id) < tuple_(*after)
        )
    if limit is not None:
        candidates = candidates.order_by(*NEWEST).limit(limit + 1)
    taken = candidates.subquery()
    order = (taken.c.created_at.desc(), taken.c.id.desc())
    ranked = select(
        taken.c.id,
        (func.sum(taken.c.weight).over(order_by=order) - taken.c.weight).label("before"),
        func.count().over().label("total"),
    ).subquery()
    rows = (
        await session.execute(
            select(ProjectNote, ranked.c.total)
            .join(ranked, ranked.c.id == ProjectNote.id)
            .where(ranked.c.before < NOTES_PER_READ)
            .order_by(*NEWEST)
            .limit(limit)
        )
    ).all()
    return [note for note, _ in rows], rows[0].total if rows else 0


async def _note_previews(session: AsyncSession, answer: runs_pb2.Project) -> None:
    """The newest NOTES_PER_LIST notes, their text read no further than its preview."""
    rows = await session.execute(
        select(
            ProjectNote.id,
            func.substr(ProjectNote.text, 1, NOTE_PREVIEW + 1).label("text"),
            ProjectNote.created_at,
            func.count().over().label("total"),
        )
        .where(ProjectNote.project_id == answer.id)
        .order_by(*NEWEST)
        .limit(NOTES_PER_LIST)
    )
    for row in rows:
        text = row.text
        if len(text) > NOTE_PREVIEW:
            text = text[:NOTE_PREVIEW] + CUT
            answer.notes_cut = True
        answer.notes.add(id=row.id, project_id=answer.id, text=text, created_at=row.created_at)
        answer.notes_left_out = row.total - len(answer.notes)

"""Projects, their repositories and notes, and workflow insights: all tenant-scoped."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow.errors import AlreadyExists, NotFound
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.models import Project, ProjectNote, Repository, Workflow, WorkflowInsight
from nyxflow_runs.store.base import StoreBase

MAX_PROJECTS = 500


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
            return await self._project_pb(session, project)

    async def list_projects(self, tenant_id: str) -> list[runs_pb2.Project]:
        async with self._scoped(tenant_id) as session:
            rows = await session.scalars(select(Project).order_by(Project.name).limit(MAX_PROJECTS))
            return [await self._project_pb(session, p) for p in rows.all()]

    async def add_repository(
        self, tenant_id: str, project_id: str, owner: str, repo: str, path: str
    ) -> runs_pb2.Repository:
        try:
            async with self._scoped(tenant_id, write=True) as session:
                await self._project(session, project_id)
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
            await self._project(session, project_id)
            note = ProjectNote(project_id=project_id, text=text)
            session.add(note)
            await session.flush()
            return convert.note(note)

    async def add_workflow_insight(
        self, tenant_id: str, workflow_id: str, text: str
    ) -> runs_pb2.WorkflowInsight:
        async with self._scoped(tenant_id, write=True) as session:
            await self._workflow(session, tenant_id, workflow_id)
            insight = WorkflowInsight(workflow_id=workflow_id, text=text)
            session.add(insight)
            await session.flush()
            return convert.insight(insight)

    async def require_project(self, tenant_id: str, project_id: str) -> None:
        async with self._scoped(tenant_id) as session:
            await self._project(session, project_id)

    @staticmethod
    async def _project(session: AsyncSession, project_id: str) -> Project:
        # No tenant in the where: the scoped session adds it.
        project = await session.scalar(select(Project).where(Project.id == project_id))
        if project is None:
            raise NotFound(f"project {project_id} not found")
        return project

    @staticmethod
    async def _project_pb(session: AsyncSession, project: Project) -> runs_pb2.Project:
        repositories = await session.scalars(
            select(Repository)
            .where(Repository.project_id == project.id)
            .order_by(Repository.owner, Repository.repo)
        )
        notes = await session.scalars(
            select(ProjectNote)
            .where(ProjectNote.project_id == project.id)
            .order_by(ProjectNote.created_at, ProjectNote.id)
        )
        workflows = await session.scalars(
            select(Workflow.id).where(Workflow.project_id == project.id).order_by(Workflow.id)
        )
        return convert.project(project, repositories.all(), notes.all(), workflows.all())

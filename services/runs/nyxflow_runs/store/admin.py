"""Operator work that crosses tenants: tenants, API keys, moving a project.

These run on unscoped sessions on purpose; the admin key guards them (servicer_admin.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow import events as ev
from nyxflow.auth import hash_key
from nyxflow.errors import AlreadyExists, FailedPrecondition, NotFound
from nyxflow.repos import re_rooted
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import (
    ApiKey,
    Base,
    Finding,
    Persona,
    Project,
    ProjectNote,
    Repository,
    Run,
    RunArtifact,
    RunEvent,
    Step,
    StepItem,
    Tenant,
    Workflow,
    WorkflowInsight,
)
from nyxflow_runs.store.base import StoreBase

KEY_PREFIX = "nyx_"
FAIL, REPLACE_EMPTY = "fail", "replace_empty"


@dataclass(frozen=True)
class Conflict:
    kind: str  # project | repository
    name: str
    target_id: str
    empty: bool


@dataclass(frozen=True)
class MovedPath:
    kind: str  # repository | step
    name: str
    before: str
    after: str


@dataclass
class MoveReport:
    counts: dict[str, int] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    moved: bool = False
    paths: list[MovedPath] = field(default_factory=list)


class Admin(StoreBase):
    # --- tenants ----------------------------------------------------------------------

    async def create_tenant(self, slug: str, name: str, chain: Sequence[str]) -> Tenant:
        try:
            async with self._sessions.begin() as session:
                tenant = Tenant(slug=slug, name=name, default_providers=list(chain))
                session.add(tenant)
                await session.flush()
                return tenant
        except IntegrityError:
            raise AlreadyExists(f"tenant {slug!r} exists", field="slug") from None

    async def list_tenants(self) -> list[Tenant]:
        async with self._sessions() as session:
            return list((await session.scalars(select(Tenant).order_by(Tenant.slug))).all())

    async def set_tenant_providers(self, tenant: str, chain: Sequence[str]) -> Tenant:
        async with self._sessions.begin() as session:
            row = await self._tenant(session, tenant, "tenant")
            row.default_providers = list(chain)
            return row

    # --- keys -------------------------------------------------------------------------

    async def create_api_key(
        self, tenant: str, name: str, expires_at: float | None
    ) -> tuple[ApiKey, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        async with self._sessions.begin() as session:
            owner = await self._tenant(session, tenant, "tenant")
            key = ApiKey(
                tenant_id=owner.id, name=name, key_hash=hash_key(secret), expires_at=expires_at
            )
            session.add(key)
            await session.flush()
            return key, secret

    async def list_api_keys(self, tenant: str) -> list[ApiKey]:
        async with self._sessions() as session:
            owner = await self._tenant(session, tenant, "tenant")
            rows = await session.scalars(
                select(ApiKey).where(ApiKey.tenant_id == owner.id).order_by(ApiKey.created_at)
            )
            return list(rows.all())

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        async with self._sessions.begin() as session:
            key = await session.get(ApiKey, key_id)
            if key is None:
                raise NotFound(f"key {key_id} not found", field="key_id")
            if key.revoked_at is None:
                key.revoked_at = await session.scalar(select(db_now()))
            return key

    # --- moving a project ---------------------------------------------------------------

    async def move_project(
        self,
        project_id: str,
        to_tenant: str,
        *,
        dry_run: bool,
        on_conflict: str,
        repos_root: str | None = None,
    ) -> MoveReport:
        """Everything under the project changes tenant in one transaction, or nothing does.
        With a repositories' root, its paths follow it into the new tenant's folder."""
        async with self._sessions.begin() as session:
            project = await session.get(Project, project_id, with_for_update=True)
            if project is None:
                raise NotFound(f"project {project_id} not found", field="project_id")
            target = await self._tenant(session, to_tenant, "to_tenant")
            if project.tenant_id == target.id:
                raise FailedPrecondition(f"project {project_id} already belongs to {target.slug}")
            workflows = select(Workflow.id).where(Workflow.project_id == project.id)
            # Held until the move commits: a run started meanwhile waits for it and then finds
            # its workflow another tenant's, rather than being made the old tenant's under it.
            await session.execute(workflows.with_for_update())
            active = await session.scalar(
                select(Run.id).where(
                    Run.workflow_id.in_(workflows), Run.status.in_(ev.ACTIVE_RUN_STATUSES)
                )
            )
            if active is not None:
                raise FailedPrecondition(f"project {project_id} has an active run {active}")
            report = MoveReport(
                counts=await self._move_counts(session, project.id),
                conflicts=await self._conflicts(session, project, target.id),
            )
            re_rooted = await _re_rooted(session, project, target.id, repos_root)
            report.paths = [moved for _, moved in re_rooted]
            if dry_run:
                return report
            if report.conflicts:
                self._refuse_unresolvable(report.conflicts, on_conflict)
                await self._replace(session, report.conflicts)
            report.counts = await self._move(session, project, target.id)
            for row, moved in re_rooted:
                if isinstance(row, Repository):
                    row.path = moved.after
                else:  # a new dict: an edit in place of a JSON column goes unseen
                    row.params = {**row.params, "path": moved.after}
            report.moved = True
            return report

    async def _move_counts(self, session: AsyncSession, project_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, model, where in _moved(project_id):
            counts[table] = int(
                await session.scalar(select(func.count()).select_from(model).where(where)) or 0
            )
        return counts

    async def _move(
        self, session: AsyncSession, project: Project, tenant_id: str
    ) -> dict[str, int]:
        await self._copy_personas(session, project, tenant_id)
        counts: dict[str, int] = {}
        # Rows are found by their parents' ids, never by tenant, so the order does not matter.
        for table, model, where in _moved(project.id):
            result = await session.execute(
                update(model)
                .where(where)
                .values(tenant_id=tenant_id)
                .execution_options(synchronize_session=False)
            )
            counts[table] = result.rowcount  # type: ignore[attr-defined]
        return counts

    @staticmethod
    async def _copy_personas(session: AsyncSession, project: Project, tenant_id: str) -> None:
        """Steps name personas; a tenant's own persona goes along so the steps still resolve."""
        used = select(Step.persona).where(
            Step.workflow_id.in_(select(Workflow.id).where(Workflow.project_id == project.id))
        )
        theirs = await session.scalars(
            select(Persona).where(Persona.tenant_id == project.tenant_id, Persona.name.in_(used))
        )
        present = set(
            await session.scalars(select(Persona.name).where(Persona.tenant_id == tenant_id))
        )
        for persona in theirs.all():
            if persona.name not in present:
                session.add(
                    Persona(
                        tenant_id=tenant_id,
                        name=persona.name,
                        role=persona.role,
                        system_prompt=persona.system_prompt,
                    )
                )

    @staticmethod
    async def _conflicts(session: AsyncSession, project: Project, tenant_id: str) -> list[Conflict]:
        conflicts: list[Conflict] = []
        # Held to the commit: replace_empty deletes it if it is empty, and a write under it
        # (which holds it FOR SHARE) counted after it was found empty would go with it.
        same_name = await session.scalar(
            select(Project)
            .where(Project.tenant_id == tenant_id, Project.name == project.name)
            .with_for_update()
        )
        if same_name is not None:
            children = 0
            for model in (Workflow, Repository, ProjectNote):
                children += int(
                    await session.scalar(
                        select(func.count())
                        .select_from(model)
                        .where(model.project_id == same_name.id)
                    )
                    or 0
                )
            conflicts.append(Conflict("project", project.name, same_name.id, children == 0))
        ours = await session.scalars(select(Repository).where(Repository.project_id == project.id))
        for repo in ours.all():
            clash = await session.scalar(
                select(Repository).where(
                    Repository.tenant_id == tenant_id,
                    Repository.owner == repo.owner,
                    Repository.repo == repo.repo,
                )
            )
            if clash is not None:
                # A repository row owns nothing but its name and path: replacing it loses no
                # work, so it counts as empty.
                conflicts.append(
                    Conflict("repository", f"{repo.owner}/{repo.repo}", clash.id, True)
                )
        return conflicts

    @staticmethod
    def _refuse_unresolvable(conflicts: Sequence[Conflict], on_conflict: str) -> None:
        listed = "; ".join(
            f"{c.kind} {c.name}" + ("" if c.empty else " (not empty)") for c in conflicts
        )
        if on_conflict != REPLACE_EMPTY:
            raise AlreadyExists(f"the target tenant already has: {listed}", field="on_conflict")
        if not all(c.empty for c in conflicts):
            raise AlreadyExists(
                f"only empty records can be replaced: {listed}", field="on_conflict"
            )

    @staticmethod
    async def _replace(session: AsyncSession, conflicts: Sequence[Conflict]) -> None:
        for c in conflicts:
            model = Project if c.kind == "project" else Repository
            row = await session.get(model, c.target_id)
            if row is not None:
                await session.delete(row)
        await session.flush()

    @staticmethod
    async def _tenant(session: AsyncSession, ref: str, field_name: str) -> Tenant:
        tenant = await session.scalar(
            select(Tenant).where(or_(Tenant.id == ref, Tenant.slug == ref))
        )
        if tenant is None:
            raise NotFound(f"tenant {ref!r} not found", field=field_name)
        return tenant


def _moved(project_id: str) -> list[tuple[str, type[Base], ColumnElement[bool]]]:
    """(table, model, where) for every row that belongs to the project, parents first."""
    workflows = select(Workflow.id).where(Workflow.project_id == project_id).scalar_subquery()
    steps = select(Step.id).where(Step.workflow_id.in_(workflows)).scalar_subquery()
    runs = select(Run.id).where(Run.workflow_id.in_(workflows)).scalar_subquery()
    return [
        ("projects", Project, Project.id == project_id),
        ("workflows", Workflow, Workflow.project_id == project_id),
        ("steps", Step, Step.workflow_id.in_(workflows)),
        ("step_items", StepItem, StepItem.step_id.in_(steps)),
        ("runs", Run, Run.workflow_id.in_(workflows)),
        ("run_events", RunEvent, RunEvent.run_id.in_(runs)),
        ("repositories", Repository, Repository.project_id == project_id),
        ("project_notes", ProjectNote, ProjectNote.project_id == project_id),
        ("workflow_insights", WorkflowInsight, WorkflowInsight.workflow_id.in_(workflows)),
        ("run_artifacts", RunArtifact, RunArtifact.run_id.in_(runs)),
        ("findings", Finding, Finding.run_id.in_(runs)),
    ]


async def _re_rooted(
    session: AsyncSession, project: Project, tenant_id: str, root: str | None
) -> list[tuple[Repository | Step, MovedPath]]:
    """The project's repository paths, and its tool steps' `params.path` (a pipeline's steps
    carry the path they were made with), inside the old tenant's folder: without the move
    they would stay there, and every pipeline of the project would be refused after it."""
    if not root:
        return []
    found: list[tuple[Repository | Step, MovedPath]] = []
    repos = await session.scalars(
        select(Repository)
        .where(Repository.project_id == project.id)
        .order_by(Repository.owner, Repository.repo)
    )
    for repo in repos.all():
        after = re_rooted(repo.path, root, project.tenant_id, tenant_id)
        if after is not None:
            found.append(
                (repo, MovedPath("repository", f"{repo.owner}/{repo.repo}", repo.path, after))
            )
    steps = await session.execute(
        select(Step, Workflow.name)
        .join(Workflow, Workflow.id == Step.workflow_id)
        .where(Workflow.project_id == project.id, Step.kind == "tool")
        .order_by(Workflow.created_at, Step.position)
    )
    for step, workflow in steps.all():
        path = step.params.get("path")
        if not isinstance(path, str):
            continue
        after = re_rooted(path, root, project.tenant_id, tenant_id)
        if after is not None:
            found.append((step, MovedPath("step", f"{workflow} / {step.name}", path, after)))
    return found

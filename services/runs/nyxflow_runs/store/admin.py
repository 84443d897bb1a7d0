"""Operator work that crosses tenants: tenants, API keys, moving a project.

These run on unscoped sessions on purpose; the admin key guards them (servicer_admin.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow import events as ev
from nyxflow.auth import hash_key
from nyxflow.errors import AlreadyExists, FailedPrecondition, NotFound
from nyxflow.personas import BUILTIN_PERSONAS
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
# What a persona conflict does (on_persona_conflict); FAIL refuses.
KEEP_TARGET, RENAME = "keep_target", "rename"
PERSONA_NAME_MAX = 100  # personas.name


@dataclass(frozen=True)
class Conflict:
    kind: str  # project | repository | persona
    name: str
    target_id: str  # "" for a built-in persona
    empty: bool
    detail: str = ""  # persona: how the target's differs
    renamed_to: str = ""  # persona, with RENAME: the name the source's is copied under


class Resolved(NamedTuple):
    """A persona as a tenant's steps get it: its own (its id), else the built-in (id "")."""

    id: str
    role: str
    system_prompt: str

    def same(self, other: Resolved) -> bool:
        return (self.role, self.system_prompt) == (other.role, other.system_prompt)


@dataclass
class PersonaPlan:
    """What the move does with the personas the project's steps name: the target tenant's
    copies to make (name, role, system prompt), the steps' names to rewrite, and the
    names whose meaning differs in the target."""

    copies: list[tuple[str, str, str]] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


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
        on_persona_conflict: str = FAIL,
    ) -> MoveReport:
        """Everything under the project changes tenant in one transaction, or nothing does.
        With a repositories' root, its paths follow it into the new tenant's folder. The
        moved steps' personas keep their system prompts, or the conflict is reported."""
        # A dead engine's run must not refuse the move until the sweeper comes round.
        await self.sweep_orphans_all_tenants()
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
            personas = await _persona_plan(
                session, project, target, rename=on_persona_conflict == RENAME
            )
            report = MoveReport(
                counts=await self._move_counts(session, project.id),
                conflicts=[
                    *await self._conflicts(session, project, target.id),
                    *personas.conflicts,
                ],
            )
            re_rooted = await _re_rooted(session, project, target.id, repos_root)
            report.paths = [moved for _, moved in re_rooted]
            if dry_run:
                return report
            if report.conflicts:
                self._refuse_unresolvable(report.conflicts, on_conflict, on_persona_conflict)
                await self._replace(session, report.conflicts)
            await _apply_personas(session, project.id, target.id, personas)
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
    def _refuse_unresolvable(
        conflicts: Sequence[Conflict], on_conflict: str, on_persona_conflict: str = FAIL
    ) -> None:
        """Every conflict is listed in a refusal, whichever option it names."""
        listed = "; ".join(
            f"{c.kind} {c.name}"
            + (f" ({c.detail})" if c.detail else "")
            + ("" if c.empty or c.kind == "persona" else " (not empty)")
            for c in conflicts
        )
        records = [c for c in conflicts if c.kind != "persona"]
        if records and on_conflict != REPLACE_EMPTY:
            raise AlreadyExists(f"the target tenant already has: {listed}", field="on_conflict")
        if not all(c.empty for c in records):
            raise AlreadyExists(
                f"only empty records can be replaced: {listed}", field="on_conflict"
            )
        if len(records) < len(conflicts) and on_persona_conflict not in (KEEP_TARGET, RENAME):
            raise AlreadyExists(
                f"the target tenant's personas differ from those the project's steps use "
                f"({KEEP_TARGET} or {RENAME} decides): {listed}",
                field="on_persona_conflict",
            )

    @staticmethod
    async def _replace(session: AsyncSession, conflicts: Sequence[Conflict]) -> None:
        for c in conflicts:
            if c.kind == "persona":
                continue  # never replaced: kept, or the source's copied under a new name
            model = Project if c.kind == "project" else Repository
            row = await session.get(model, c.target_id)
            if row is not None:
                await session.delete(row)
        await session.flush()

    @staticmethod
    async def _tenant(session: AsyncSession, ref: str, field_name: str) -> Tenant:
        """The tenant whose id or slug is `ref`. One whose slug is another's id (a slug shaped
        like an id, stored before CreateTenant refused them) is refused, not guessed: the
        first row found was taken, and a key could be issued to the other tenant."""
        found = (
            await session.scalars(
                select(Tenant).where(or_(Tenant.id == ref, Tenant.slug == ref)).limit(2)
            )
        ).all()
        if not found:
            raise NotFound(f"tenant {ref!r} not found", field=field_name)
        if len(found) > 1:
            raise FailedPrecondition(
                f"tenant {ref!r} is ambiguous: one tenant's id and another's slug (a slug "
                "shaped like an id, refused since); that slug must be changed in the database",
                field=field_name,
            )
        return found[0]


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


async def _persona_plan(
    session: AsyncSession, project: Project, target: Tenant, *, rename: bool
) -> PersonaPlan:
    """Each persona the project's steps name, as the source tenant resolves it (its own, else
    the built-in) against the target's resolution. The same: nothing to do. None in the
    target: the source's is copied. Another (the target's own, or a built-in the source had
    shadowed): a conflict, and with `rename` the source's is copied under a free name that
    the moved steps then use. Never copied under the same name over a built-in: the target's
    own steps naming it would change prompt."""
    used = await session.scalars(
        select(Step.persona)
        .distinct()
        .where(
            Step.workflow_id.in_(select(Workflow.id).where(Workflow.project_id == project.id)),
            Step.persona != "",
        )
    )
    names = sorted(set(used.all()))
    plan = PersonaPlan()
    if not names:
        return plan
    source = await _own_personas(session, project.tenant_id)
    theirs = await _own_personas(session, target.id)
    source_slug = str(
        await session.scalar(select(Tenant.slug).where(Tenant.id == project.tenant_id))
    )
    taken = set(theirs) | set(BUILTIN_PERSONAS) | set(names)
    for name in names:
        mine = _resolved(source, name)
        if mine is None:
            continue  # named by no persona any more: it resolves to none either way
        other = _resolved(theirs, name)
        if other is not None and other.same(mine):
            continue
        if other is None:
            plan.copies.append((name, mine.role, mine.system_prompt))
            continue
        differs = "system prompt" if other.system_prompt != mine.system_prompt else "role"
        whose = "the target's own" if other.id else "the target's built-in"
        detail = f"{whose} has another {differs}"
        renamed = ""
        if rename:
            renamed = _free_name(name, source_slug, theirs, mine, taken)
            taken.add(renamed)
            plan.renames[name] = renamed
            if renamed not in theirs:
                plan.copies.append((renamed, mine.role, mine.system_prompt))
        plan.conflicts.append(Conflict("persona", name, other.id, False, detail, renamed))
    return plan


async def _own_personas(session: AsyncSession, tenant_id: str) -> dict[str, Resolved]:
    """A tenant's own personas, by name."""
    rows = await session.scalars(select(Persona).where(Persona.tenant_id == tenant_id))
    return {p.name: Resolved(p.id, p.role, p.system_prompt) for p in rows.all()}


def _resolved(own: dict[str, Resolved], name: str) -> Resolved | None:
    """The persona `name` for a tenant with these own personas, or None: no such persona."""
    if name in own:
        return own[name]
    builtin = BUILTIN_PERSONAS.get(name)
    return None if builtin is None else Resolved("", builtin.role, builtin.system_prompt)


def _free_name(
    name: str,
    source_slug: str,
    theirs: dict[str, Resolved],
    mine: Resolved,
    taken: set[str],
) -> str:
    """`name (source-tenant)`, numbered if needed, that the target tenant does not use for
    anything else (its own persona with the very same prompt and role is reused). Never
    wider than personas.name: a slug of up to 100 characters alone outgrew it, so the slug
    is cut (marked `…`) to leave the name half the room, and the name cut to what is left."""
    for n in range(1, 1000):
        number = "" if n == 1 else f" {n}"
        room = PERSONA_NAME_MAX - len(f" ({number})")  # for the name and the slug
        slug = _cut(source_slug, max(room - len(name), min(len(source_slug), room // 2)))
        candidate = name[: room - len(slug)] + f" ({slug}{number})"
        if candidate in theirs and theirs[candidate].same(mine):
            return candidate
        if candidate not in taken:
            return candidate
    raise FailedPrecondition(f"no free name for persona {name!r} in the target tenant")


def _cut(text: str, limit: int) -> str:
    """`text`, or its first characters and `…` if it is longer than `limit`."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _apply_personas(
    session: AsyncSession, project_id: str, tenant_id: str, plan: PersonaPlan
) -> None:
    """The plan's copies made in the target tenant, and the moved steps' renamed personas."""
    session.add_all(
        Persona(tenant_id=tenant_id, name=name, role=role, system_prompt=prompt)
        for name, role, prompt in plan.copies
    )
    workflows = select(Workflow.id).where(Workflow.project_id == project_id)
    for old, new in plan.renames.items():
        await session.execute(
            update(Step)
            .where(Step.workflow_id.in_(workflows), Step.persona == old)
            .values(persona=new)
            .execution_options(synchronize_session=False)
        )
    await session.flush()

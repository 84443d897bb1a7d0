"""Tenants, keys, personas, workflows and reading runs."""

from __future__ import annotations

import hmac
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Integer, Row, Text, cast, delete, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import defer
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from nyxflow import events as ev
from nyxflow import metrics
from nyxflow.auth import hash_key
from nyxflow.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from nyxflow.personas import BUILTIN_PERSONAS
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs import convert
from nyxflow_runs import validation as valid
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import (
    ApiKey,
    Persona,
    Run,
    RunEvent,
    Step,
    StepItem,
    Tenant,
    Workflow,
)
from nyxflow_runs.store.base import StoreBase
from nyxflow_runs.store.paging import PageEnd
from nyxflow_runs.store.projects import held_project, held_under_project
from nyxflow_runs.validation import StepDraft

DEFAULT_TENANT = "default"
DEFAULT_TENANT_LOCK = 7_240_002  # pg advisory lock (migrations' env.py holds 7_240_001)
MAX_LIST = 500


class OctetLength(FunctionElement[int]):
    """A text's size in bytes. PostgreSQL's octet_length reads a stored value's size off its
    header, without fetching or decompressing it; SQLite 3.40 has no octet_length."""

    type = Integer()
    inherit_cache = True


@compiles(OctetLength)
def _octets(element: OctetLength, compiler: SQLCompiler, **kw: Any) -> str:
    return f"octet_length({compiler.process(element.clauses, **kw)})"


def within(sizes: Sequence[Row[int, int | None]], limit: int, max_bytes: int) -> list[int]:
    """The keys of the first rows of (key, size) that `limit` and `max_bytes` hold: the
    first always, however large, so that a read goes on."""
    chosen: list[int] = []
    total = 0
    for key, size in sizes[:limit]:
        if chosen and total + (size or 0) > max_bytes:
            break
        chosen.append(key)
        total += size or 0
    return chosen


@compiles(OctetLength, "sqlite")
def _octets_sqlite(element: OctetLength, compiler: SQLCompiler, **kw: Any) -> str:
    return f"length(CAST({compiler.process(element.clauses, **kw)} AS BLOB))"


def latest_run(column: Any) -> Any:
    """`column` of the workflow's latest run (a scalar subquery on the enclosing query's
    workflow): newest created_at, then greatest id, as ListRuns orders them."""
    return (
        select(column)
        .where(Run.workflow_id == Workflow.id)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def step_row(tenant_id: str, workflow_id: str, position: int, d: StepDraft) -> Step:
    return Step(
        tenant_id=tenant_id,
        workflow_id=workflow_id,
        position=position,
        name=d.name,
        kind=d.kind,
        prompt=d.prompt,
        provider=d.provider,
        model=d.model,
        params=d.params,
        max_tokens=d.max_tokens,
        persona=d.persona,
        alternatives=d.alternatives,
        auto_continue=d.auto_continue,
        config=d.config,
    )


ENV_KEY = "NYXFLOW_API_KEY"  # the name of the key registered from runs' settings
LEGACY_ENV_KEY = "default"  # its name before


class Workflows(StoreBase):
    # --- tenants and keys -------------------------------------------------------------

    async def ensure_default_tenant(self, api_key: str) -> tuple[str, int]:
        """Create the `default` tenant and register `api_key` for it (idempotent), and revoke
        the keys registered so before it: changing NYXFLOW_API_KEY is how a leaked key is
        rotated, and a first start with the defaults left the well-known `dev-key`, both valid
        for ever. Only earlier ones: a replica restarted with a stale setting revokes nothing
        newer (its own key stays refused). The tenant, and how many keys were revoked."""
        async with self._sessions.begin() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Replicas starting together: the second waits for the first's commit and
                # then sees its tenant and key (read committed), instead of inserting them
                # again and dying on the unique slug. Replicas share PostgreSQL, not SQLite.
                await session.execute(text(f"SELECT pg_advisory_xact_lock({DEFAULT_TENANT_LOCK})"))
            tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == DEFAULT_TENANT))
            if tenant_id is None:
                tenant = Tenant(slug=DEFAULT_TENANT, name="Default")
                session.add(tenant)
                await session.flush()
                tenant_id = tenant.id
            digest = hash_key(api_key)
            current = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
            if current is None:
                current = ApiKey(tenant_id=tenant_id, name=ENV_KEY, key_hash=digest)
                session.add(current)
                await session.flush()
            elif current.tenant_id != tenant_id:
                return tenant_id, 0  # a key an admin made for another tenant: not ours to rule
            current.name = ENV_KEY  # registered as `default` before this name was kept for it
            since = select(ApiKey.created_at).where(ApiKey.id == current.id).scalar_subquery()
            revoked = await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.tenant_id == tenant_id,
                    ApiKey.name.in_((ENV_KEY, LEGACY_ENV_KEY)),
                    ApiKey.revoked_at.is_(None),
                    ApiKey.id != current.id,
                    ApiKey.created_at <= since,
                )
                .values(revoked_at=db_now())
            )
        return tenant_id, int(revoked.rowcount or 0)  # type: ignore[attr-defined]

    async def tenant_for_key(self, api_key: str) -> tuple[str, float | None]:
        """The key's tenant, and the seconds it has left by the database's clock, which
        judged it valid (None: it never expires)."""
        digest = hash_key(api_key)
        left = (ApiKey.expires_at - db_now()).label("left")
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(ApiKey.tenant_id, ApiKey.key_hash, left).where(
                        ApiKey.key_hash == digest,
                        ApiKey.revoked_at.is_(None),
                        (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > db_now()),
                    )
                )
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise Unauthenticated("invalid API key")
        return str(row.tenant_id), row.left

    # --- personas -----------------------------------------------------------------------

    async def list_personas(self, tenant_id: str) -> list[pb.Persona]:
        async with self._scoped(tenant_id) as session:
            own = (
                await session.scalars(select(Persona).where(Persona.tenant_id == tenant_id))
            ).all()
        result = {
            p.name: pb.Persona(
                name=p.name, role=p.role, system_prompt=p.system_prompt, builtin=True
            )
            for p in BUILTIN_PERSONAS.values()
        }
        for p in own:
            result[p.name] = pb.Persona(name=p.name, role=p.role, system_prompt=p.system_prompt)
        return sorted(result.values(), key=lambda p: p.name.lower())

    async def put_persona(self, tenant_id: str, persona: pb.Persona) -> pb.Persona:
        name = persona.name.strip()
        if not name:
            raise InvalidArgument("is required", field="persona.name")
        if not persona.system_prompt.strip():
            raise InvalidArgument("is required", field="persona.system_prompt")
        try:
            await self._save_persona(tenant_id, name, persona)
        except IntegrityError:
            # Another request created the name between our read and our insert: a PUT is
            # idempotent, so this one updates the row it made, as it would have a moment later.
            await self._save_persona(tenant_id, name, persona)
        return pb.Persona(name=name, role=persona.role, system_prompt=persona.system_prompt)

    async def _save_persona(self, tenant_id: str, name: str, persona: pb.Persona) -> None:
        async with self._scoped(tenant_id, write=True) as session:
            row = await session.scalar(
                select(Persona).where(Persona.tenant_id == tenant_id, Persona.name == name)
            )
            if row is None:
                row = Persona(tenant_id=tenant_id, name=name)
                session.add(row)
            row.role = persona.role
            row.system_prompt = persona.system_prompt

    # --- workflows --------------------------------------------------------------------

    async def create_workflow(
        self,
        tenant_id: str,
        name: str,
        drafts: Sequence[StepDraft],
        consistency_check: bool = False,
        default_providers: Sequence[str] = (),
        project_id: str | None = None,
        on_orphan: str = ev.ON_ORPHAN_FAIL,
    ) -> pb.Workflow:
        async with self._scoped(tenant_id, write=True) as session:
            # Held to the commit: a move of the project to another tenant is waited for, then
            # seen (projects.py, held_project).
            if (
                project_id is not None
                and await held_project(session, tenant_id, project_id) is None
            ):
                raise NotFound(f"project {project_id} not found", field="project_id")
            workflow = Workflow(
                tenant_id=tenant_id,
                project_id=project_id,
                name=name,
                consistency_check=consistency_check,
                on_orphan=on_orphan,
                default_providers=list(default_providers),
            )
            session.add(workflow)
            await session.flush()
            session.add_all(step_row(tenant_id, workflow.id, i, d) for i, d in enumerate(drafts))
            await session.flush()
            return await self._workflow_pb(session, workflow)

    async def get_workflow(
        self, tenant_id: str, workflow_id: str, brief: bool = False
    ) -> pb.Workflow:
        async with self._scoped(tenant_id) as session:
            workflow = await self._workflow(session, tenant_id, workflow_id)
            return await self._workflow_pb(session, workflow, brief)

    async def list_workflows(self, tenant_id: str) -> list[pb.Workflow]:
        async with self._scoped(tenant_id) as session:
            workflows = (
                await session.scalars(
                    select(Workflow)
                    .where(Workflow.tenant_id == tenant_id)
                    .order_by(Workflow.created_at.desc(), Workflow.id)
                    .limit(MAX_LIST)
                )
            ).all()
            ids = [w.id for w in workflows]
            # Brief steps without their prompts or params: what they produced (up to megabytes
            # each) and what they ask (generated prompts of many kilobytes, params up to the
            # message limit) are GetWorkflow's, or a tenant's list would outgrow a message once
            # enough workflows were stored.
            steps = (
                await session.scalars(
                    select(Step)
                    .where(Step.workflow_id.in_(ids))
                    .order_by(Step.position)
                    .options(
                        defer(Step.output),
                        defer(Step.alternatives_out),
                        defer(Step.prompt),
                        defer(Step.params),
                    )
                )
            ).all()
            # Each workflow's latest run (id, status): its first entry in
            # ix_runs_workflow_created. Ranking their runs read every run they ever had, at
            # every poll of the list; loading the latest by id after (or in a join), every run
            # of the tenant.
            latest_rows = await session.execute(
                select(
                    Workflow.id,
                    latest_run(Run.id).label("run_id"),
                    latest_run(Run.status).label("status"),
                ).where(Workflow.id.in_(ids))
            )
            latest = {row.id: row for row in latest_rows if row.run_id is not None}
            steps_pb = await self._steps_pb(session, tenant_id, steps, brief=True, listed=True)
        by_workflow: dict[str, list[pb.Step]] = {}
        for step, step_pb in zip(steps, steps_pb, strict=True):
            by_workflow.setdefault(step.workflow_id, []).append(step_pb)
        result = []
        for w in workflows:
            message = convert.workflow(w, by_workflow.get(w.id, []))
            if (run := latest.get(w.id)) is not None:
                message.status, message.last_run_id = run.status, run.run_id
            result.append(message)
        return result

    async def duplicate_workflow(self, tenant_id: str, workflow_id: str, name: str) -> pb.Workflow:
        """Same definition minus auto-generated steps; order 0..n-1, new ids, nothing executed."""
        async with self._scoped(tenant_id, write=True) as session:
            # Held with its project (the copy goes under it) until the commit: a move of the
            # project to another tenant is waited for, then seen.
            source = await held_under_project(session, Workflow, tenant_id, workflow_id)
            if source is None:
                raise NotFound(f"workflow {workflow_id} not found")
            copy = Workflow(
                tenant_id=tenant_id,
                project_id=source.project_id,
                name=name or valid.fitted_name(source.name, keep_end=" (copy)"),
                consistency_check=source.consistency_check,
                on_orphan=source.on_orphan,
                default_providers=list(source.default_providers or []),
            )
            session.add(copy)
            await session.flush()
            authored = [s for s in await self._steps(session, workflow_id) if not s.auto_generated]
            for position, s in enumerate(authored):
                session.add(
                    Step(
                        tenant_id=tenant_id,
                        workflow_id=copy.id,
                        position=position,
                        name=s.name,
                        kind=s.kind,
                        prompt=s.prompt,
                        provider=s.provider,
                        model=s.model,
                        params=dict(s.params or {}),
                        max_tokens=s.max_tokens,
                        persona=s.persona,
                        alternatives=s.alternatives,
                        auto_continue=s.auto_continue,
                        config=dict(s.config or {}),
                    )
                )
            await session.flush()
            return await self._workflow_pb(session, copy)

    async def delete_workflow(self, tenant_id: str, workflow_id: str) -> None:
        async with self._scoped(tenant_id) as session:
            await self._workflow(session, tenant_id, workflow_id)  # NotFound before any write
        # A dead engine's run must not refuse the delete until the sweeper comes round.
        await self.sweep_orphans_all_tenants(workflow_id=workflow_id)
        async with self._scoped(tenant_id, write=True) as session:
            await self._workflow(session, tenant_id, workflow_id, lock=True)
            await self._require_idle(session, workflow_id)
            # Steps, items, runs and events go by ON DELETE CASCADE (SQLite: foreign_keys=ON).
            await session.execute(delete(Workflow).where(Workflow.id == workflow_id))

    # --- runs -------------------------------------------------------------------------

    async def create_run(self, tenant_id: str, workflow_id: str) -> pb.Run:
        if self._hot is not None:
            created = await self._hot.create_run(tenant_id, workflow_id)
            if created is not None:
                metrics.RUNS_CREATED.inc()
                return created
        async with self._scoped(tenant_id) as session:
            await self._workflow(session, tenant_id, workflow_id)  # NotFound before any write
        # A stale run must not block a new one: sweep this workflow's orphans first.
        await self.sweep_orphans_all_tenants(workflow_id=workflow_id)
        try:
            async with self._scoped(tenant_id, write=True) as session:
                # Locked: a project's move to another tenant is waited for, then seen.
                await self._workflow(session, tenant_id, workflow_id, lock=True)
                # Refused here, not by the insert: that waits on the active run's row while
                # this holds the workflow's, and a cancel or pause of that run, which checks
                # its foreign key on the workflow's row, deadlocked with it.
                await self._require_idle(session, workflow_id)
                previous = await self._latest_run(session, workflow_id)
                await self._something_to_run(session, previous, workflow_id)
                run = Run(tenant_id=tenant_id, workflow_id=workflow_id, status=ev.PENDING)
                session.add(run)
                await session.flush()
                # Once more: the latest run's completion, committed between the check and the
                # insert, let the insert through (the active run it met was gone), unseen.
                await self._something_to_run(session, previous, workflow_id)
                metrics.RUNS_CREATED.inc()
                # Like a resume, it runs only the steps not completed: what those saved goes on.
                await self._carry_results(session, tenant_id, previous, run)
                return convert.run(run)
        except IntegrityError:
            raise await self._lost_race(tenant_id, workflow_id) from None

    async def get_run(self, tenant_id: str, run_id: str, brief: bool = False) -> pb.Run:
        async with self._scoped(tenant_id) as session:
            run = await self._run(session, tenant_id, run_id)
            if brief:
                return convert.run(run)
            found = await self._run_pb(session, run)
            latest = await self._latest_run(session, run.workflow_id)
            if latest is not None and latest.id != run.id:
                found.superseded_by = latest.id  # its steps are the newer run's: say so
            return found

    async def get_step(self, tenant_id: str, step_id: str) -> pb.Step:
        """One step whole: its output and alternatives even where a whole read leaves them out
        (Step.output_left_out), its items' outputs within what that leaves of the message."""
        async with self._scoped(tenant_id) as session:
            step = await self._step(session, tenant_id, step_id)
            return (await self._steps_pb(session, tenant_id, [step]))[0]

    async def list_step_items(
        self, tenant_id: str, run_id: str, step_id: str, from_index: int, limit: int, max_bytes: int
    ) -> tuple[list[pb.StepItem], int | None]:
        """The step's items from `from_index` on, at most `limit` and `max_bytes` of output (the
        first always), and the index to go on from when more are stored. The sizes are read
        first, so that outputs past the bound are never loaded. FAILED_PRECONDITION for a run
        that is not its workflow's latest: the items are the latest run's."""
        async with self._scoped(tenant_id) as session:
            run = await self._run(session, tenant_id, run_id)
            step = await session.scalar(
                select(Step.id).where(Step.id == step_id, Step.workflow_id == run.workflow_id)
            )
            if step is None:
                raise NotFound(f"run {run_id} has no step {step_id}", field="step_id")
            sizes = (
                await session.execute(
                    select(StepItem.item_index, OctetLength(StepItem.output))
                    .where(StepItem.step_id == step_id, StepItem.item_index >= from_index)
                    .order_by(StepItem.item_index)
                    .limit(limit + 1)
                )
            ).all()
            chosen = within(sizes, limit, max_bytes)
            items: list[pb.StepItem] = []
            if chosen:
                # By index, not range: an item stored meanwhile inside it stays out of bounds.
                rows = await session.scalars(
                    select(StepItem)
                    .where(StepItem.step_id == step_id, StepItem.item_index.in_(chosen))
                    .order_by(StepItem.item_index)
                )
                items = [convert.item(row) for row in rows.all()]
            # Steps and their items hold one state, the latest run's: a newer run resets or
            # replaces them. Read after the items: a run that reset them was created in the
            # same transaction, so it is seen here if its reset was seen above.
            latest = await self._latest_run(session, run.workflow_id)
            if latest is not None and latest.id != run.id:
                raise FailedPrecondition(
                    f"step {step_id}'s items belong to run {latest.id}, a newer run of "
                    f"workflow {run.workflow_id} than run {run_id}",
                    field="run_id",
                )
        more = sizes[len(chosen)].item_index if len(sizes) > len(chosen) else None
        return items, more

    async def list_runs(
        self,
        tenant_id: str,
        workflow_id: str = "",
        status: str = "",
        limit: int = 50,
        before: PageEnd | None = None,
    ) -> tuple[list[pb.Run], PageEnd | None]:
        """The newest `limit` runs (older than `before`, the previous page's end), newest
        first, and where the next page begins (None: no older run)."""
        query = select(Run).where(Run.tenant_id == tenant_id)
        if workflow_id:
            query = query.where(Run.workflow_id == workflow_id)
        if status:
            query = query.where(Run.status == status)
        if before is not None:  # (created_at, id) as ordered: ties are neither skipped nor repeated
            query = query.where(tuple_(Run.created_at, Run.id) < tuple_(*before))
        limit = min(limit, MAX_LIST)
        query = query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1)
        async with self._scoped(tenant_id) as session:
            if workflow_id:  # a mistyped (or another tenant's) id is not "no runs"
                await self._workflow(session, tenant_id, workflow_id)
            rows = (await session.scalars(query)).all()
        page = rows[:limit]
        more = PageEnd(page[-1].created_at, page[-1].id) if page and len(rows) > limit else None
        return [convert.run(r) for r in page], more

    async def events_after(
        self, tenant_id: str, run_id: str, after_seq: int, limit: int = 500
    ) -> list[pb.RunEvent]:
        async with self._scoped(tenant_id) as session:
            rows = (
                await session.scalars(
                    select(RunEvent)
                    .where(
                        RunEvent.run_id == run_id,
                        RunEvent.tenant_id == tenant_id,
                        RunEvent.seq > after_seq,
                    )
                    .order_by(RunEvent.seq)
                    .limit(limit)
                )
            ).all()
        return [convert.event(r) for r in rows]

    async def events_of_types(
        self,
        tenant_id: str,
        run_id: str,
        after_seq: int,
        types: Collection[str],
        limit: int,
        max_bytes: int,
    ) -> tuple[list[pb.RunEvent], int, int]:
        """The run's stored events of `types` after `after_seq`, in seq order: at most `limit`
        and `max_bytes` of data (the first always); with the seq the read went through (the
        next call's after_seq) and the run's last seq. Read only up to the run's last seq as
        read first: an event committed meanwhile is neither given nor read past. Sizes are
        read first: events past the bounds are never loaded."""
        async with self._scoped(tenant_id) as session:
            last_seq = (await self._run(session, tenant_id, run_id)).last_seq
            sizes = (
                await session.execute(
                    select(RunEvent.seq, OctetLength(cast(RunEvent.data, Text)))
                    .where(
                        RunEvent.run_id == run_id,
                        RunEvent.tenant_id == tenant_id,
                        RunEvent.seq > after_seq,
                        RunEvent.seq <= last_seq,
                        RunEvent.type.in_(sorted(types)),
                    )
                    .order_by(RunEvent.seq)
                    .limit(limit + 1)
                )
            ).all()
            chosen = within(sizes, limit, max_bytes)
            events: list[pb.RunEvent] = []
            if chosen:
                rows = await session.scalars(
                    select(RunEvent)
                    .where(RunEvent.run_id == run_id, RunEvent.seq.in_(chosen))
                    .order_by(RunEvent.seq)
                )
                events = [convert.event(r) for r in rows.all()]
        through = chosen[-1] if len(chosen) < len(sizes) else max(last_seq, after_seq)
        return events, through, last_seq

    async def run_status(self, tenant_id: str, run_id: str) -> str:
        async with self._scoped(tenant_id) as session:
            return (await self._run(session, tenant_id, run_id)).status

    async def watched_marks(
        self, watched: Collection[tuple[str, str]], chunk: int = 500
    ) -> dict[tuple[str, str], tuple[int, str]]:
        """The last seq and status of each watched (tenant, run), in one query per `chunk`
        runs, for the watchers' poller. Across tenants, as the sweeper reads: each row is
        given only under the tenant a watcher was allowed to watch it as; a run gone (or
        never that tenant's) is left out."""
        wanted = set(watched)
        ids = sorted({run_id for _, run_id in wanted})
        marks: dict[tuple[str, str], tuple[int, str]] = {}
        async with self._sessions() as session:
            for start in range(0, len(ids), chunk):
                rows = await session.execute(
                    select(Run.tenant_id, Run.id, Run.last_seq, Run.status).where(
                        Run.id.in_(ids[start : start + chunk])
                    )
                )
                for tenant_id, run_id, last_seq, status in rows:
                    if (tenant_id, run_id) in wanted:
                        marks[tenant_id, run_id] = (last_seq, status)
        return marks

"""Every query of the suite. Each public method is scoped by the caller's tenant, except the
sweeper's, which says so in its name."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nyxflow import events as ev
from nyxflow.auth import hash_key
from nyxflow.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StaleToken,
    Unauthenticated,
)
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import ApiKey, Run, RunEvent, Step, Tenant, Workflow
from nyxflow_runs.validation import StepDraft, event_data

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Draft:
    """An event to persist: its seq is assigned by the write that stores it."""

    type: str
    data: dict[str, Any]

    @classmethod
    def from_pb(cls, drafts: Sequence[pb.EventDraft]) -> list[Draft]:
        return [
            cls(d.type, event_data(d.data_json, f"events[{i}].data_json"))
            for i, d in enumerate(drafts)
        ]


@dataclass(frozen=True)
class Claim:
    won: bool
    token: int
    run: pb.Run
    events: list[pb.RunEvent]


class Store:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], bus: LocalBus) -> None:
        self._sessions = sessions
        self._bus = bus

    # --- tenants and keys -------------------------------------------------------------

    async def ensure_default_tenant(self, api_key: str) -> str:
        """Create the `default` tenant and register `api_key` for it (idempotent)."""
        async with self._sessions.begin() as session:
            tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == DEFAULT_TENANT))
            if tenant_id is None:
                tenant = Tenant(slug=DEFAULT_TENANT, name="Default")
                session.add(tenant)
                await session.flush()
                tenant_id = tenant.id
            digest = hash_key(api_key)
            exists = await session.scalar(select(ApiKey.id).where(ApiKey.key_hash == digest))
            if exists is None:
                session.add(ApiKey(tenant_id=tenant_id, name="default", key_hash=digest))
        return tenant_id

    async def tenant_for_key(self, api_key: str) -> str:
        digest = hash_key(api_key)
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(ApiKey.tenant_id, ApiKey.key_hash).where(
                        ApiKey.key_hash == digest,
                        ApiKey.revoked_at.is_(None),
                        (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > db_now()),
                    )
                )
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise Unauthenticated("invalid API key")
        return str(row.tenant_id)

    # --- workflows --------------------------------------------------------------------

    async def create_workflow(
        self, tenant_id: str, name: str, drafts: Sequence[StepDraft]
    ) -> pb.Workflow:
        async with self._sessions.begin() as session:
            workflow = Workflow(tenant_id=tenant_id, name=name)
            session.add(workflow)
            await session.flush()
            steps = [
                Step(
                    tenant_id=tenant_id,
                    workflow_id=workflow.id,
                    position=i,
                    name=d.name,
                    kind=d.kind,
                    prompt=d.prompt,
                    provider=d.provider,
                    model=d.model,
                    params=d.params,
                    max_tokens=d.max_tokens,
                )
                for i, d in enumerate(drafts)
            ]
            session.add_all(steps)
            await session.flush()
            return convert.workflow(workflow, steps)

    async def get_workflow(self, tenant_id: str, workflow_id: str) -> pb.Workflow:
        async with self._sessions() as session:
            workflow = await self._workflow(session, tenant_id, workflow_id)
            return convert.workflow(workflow, await self._steps(session, workflow_id))

    async def list_workflows(self, tenant_id: str) -> list[pb.Workflow]:
        async with self._sessions() as session:
            workflows = (
                await session.scalars(
                    select(Workflow)
                    .where(Workflow.tenant_id == tenant_id)
                    .order_by(Workflow.created_at.desc(), Workflow.id)
                )
            ).all()
            steps = (
                await session.scalars(
                    select(Step)
                    .where(Step.tenant_id == tenant_id)
                    .order_by(Step.workflow_id, Step.position)
                )
            ).all()
        by_workflow: dict[str, list[Step]] = {}
        for step in steps:
            by_workflow.setdefault(step.workflow_id, []).append(step)
        return [convert.workflow(w, by_workflow.get(w.id, [])) for w in workflows]

    # --- runs -------------------------------------------------------------------------

    async def create_run(self, tenant_id: str, workflow_id: str) -> pb.Run:
        # A stale run must not block a new one: sweep this workflow's orphans first.
        await self.sweep_orphans_all_tenants(workflow_id=workflow_id)
        try:
            async with self._sessions.begin() as session:
                await self._workflow(session, tenant_id, workflow_id)
                run = Run(tenant_id=tenant_id, workflow_id=workflow_id, status=ev.PENDING)
                session.add(run)
                await session.flush()
                return convert.run(run)
        except IntegrityError:
            raise FailedPrecondition(f"workflow {workflow_id} already has an active run") from None

    async def get_run(self, tenant_id: str, run_id: str) -> pb.Run:
        async with self._sessions() as session:
            run = await self._run(session, tenant_id, run_id)
            return convert.run(run, await self._steps(session, run.workflow_id))

    async def claim_run(self, tenant_id: str, run_id: str, owner: str, ttl_s: float) -> Claim:
        """The one pending → running transition: a compare-and-set, so only one caller wins."""
        async with self._sessions.begin() as session:
            won = (
                await session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.tenant_id == tenant_id, Run.status == ev.PENDING)
                    .values(
                        status=ev.RUNNING,
                        token=Run.token + 1,
                        lease_owner=owner,
                        lease_expires_at=db_now() + ttl_s,
                        started_at=db_now(),
                        last_seq=Run.last_seq + 1,
                    )
                    .returning(Run.token, Run.last_seq)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if won is None:
                run = await self._run(session, tenant_id, run_id)  # NotFound if not ours
                return Claim(False, 0, convert.run(run), [])
            rows = await self._insert_events(
                session, tenant_id, run_id, won.last_seq, [Draft(ev.RUN_STARTED, {"owner": owner})]
            )
            run = await self._run(session, tenant_id, run_id)
            steps = await self._steps(session, run.workflow_id)
            claim = Claim(True, won.token, convert.run(run, steps), rows)
        await self._bus.publish(run_id, claim.events)
        return claim

    async def heartbeat(self, tenant_id: str, run_id: str, token: int, ttl_s: float) -> float:
        async with self._sessions.begin() as session:
            expires = await session.scalar(
                update(Run)
                .where(*self._fenced(tenant_id, run_id, token))
                .values(lease_expires_at=db_now() + ttl_s)
                .returning(Run.lease_expires_at)
                .execution_options(synchronize_session=False)
            )
            if expires is None:
                await self._refuse(session, tenant_id, run_id)
        return float(expires or 0.0)

    async def append_events(
        self, tenant_id: str, run_id: str, token: int, drafts: Sequence[Draft]
    ) -> list[pb.RunEvent]:
        async with self._sessions.begin() as session:
            written = await self._fenced_append(session, tenant_id, run_id, token, drafts)
        await self._bus.publish(run_id, written)
        return written

    async def update_step(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        step_id: str,
        change: runs_pb2.StepChange,
        drafts: Sequence[Draft],
    ) -> list[pb.RunEvent]:
        if change.status not in ev.STEP_STATUSES:
            raise InvalidArgument(f"unknown step status {change.status!r}", field="change.status")
        async with self._sessions.begin() as session:
            workflow_id = await self._fenced_workflow(session, tenant_id, run_id, token)
            values: dict[str, Any] = {"status": change.status}
            if change.status == ev.RUNNING:
                values.update(started_at=db_now(), finished_at=None, error=None)
            else:
                values.update(
                    output=change.output or None,
                    error=change.error or None,
                    truncated=change.truncated,
                    finish_reason=change.finish_reason or None,
                    input_tokens=change.input_tokens,
                    output_tokens=change.output_tokens,
                    served_by=change.served_by or None,
                    finished_at=db_now(),
                )
            updated = await session.scalar(
                update(Step)
                .where(
                    Step.id == step_id,
                    Step.workflow_id == workflow_id,
                    Step.tenant_id == tenant_id,
                )
                .values(**values)
                .returning(Step.id)
                .execution_options(synchronize_session=False)
            )
            if updated is None:
                raise NotFound(f"step {step_id} not found in run {run_id}")
            written = await self._fenced_append(session, tenant_id, run_id, token, drafts)
        await self._bus.publish(run_id, written)
        return written

    async def finish_run(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        status: str,
        error: str,
        drafts: Sequence[Draft],
    ) -> list[pb.RunEvent]:
        """Ends a run and always appends its terminal event, in one transaction."""
        terminal = ev.TERMINAL_EVENT_FOR_STATUS.get(status)
        if terminal is None:
            raise InvalidArgument(f"cannot finish a run as {status!r}", field="status")
        data: dict[str, Any] = {"status": status}
        if error:
            data["error"] = error
        async with self._sessions.begin() as session:
            workflow_id = await self._fenced_workflow(session, tenant_id, run_id, token)
            written = await self._fenced_append(
                session, tenant_id, run_id, token, [*drafts, Draft(terminal, data)]
            )
            await session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    status=status,
                    error=error or None,
                    finished_at=db_now(),
                    lease_owner=None,
                    lease_expires_at=None,
                )
                .execution_options(synchronize_session=False)
            )
            await self._settle_running_steps(session, [workflow_id], status, error)
        await self._bus.publish(run_id, written)
        return written

    async def events_after(
        self, tenant_id: str, run_id: str, after_seq: int, limit: int = 500
    ) -> list[pb.RunEvent]:
        async with self._sessions() as session:
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

    async def run_status(self, tenant_id: str, run_id: str) -> str:
        async with self._sessions() as session:
            return (await self._run(session, tenant_id, run_id)).status

    # --- the sweeper (across tenants) ---------------------------------------------------

    async def sweep_orphans_all_tenants(self, workflow_id: str | None = None) -> list[str]:
        """Fail every running run whose lease expired by the database's clock.

        A conditional UPDATE: two replicas sweeping at once sweep each orphan once.
        """
        conditions = [Run.status == ev.RUNNING, Run.lease_expires_at < db_now()]
        if workflow_id is not None:
            conditions.append(Run.workflow_id == workflow_id)
        published: list[tuple[str, list[pb.RunEvent]]] = []
        async with self._sessions.begin() as session:
            swept = (
                await session.execute(
                    update(Run)
                    .where(and_(*conditions))
                    .values(
                        status=ev.FAILED,
                        error=ev.ORPHAN_ERROR,
                        finished_at=db_now(),
                        lease_owner=None,
                        lease_expires_at=None,
                        last_seq=Run.last_seq + 1,
                    )
                    .returning(Run.id, Run.tenant_id, Run.workflow_id, Run.last_seq)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            for row in swept:
                draft = Draft(ev.RUN_FAILED, {"status": ev.FAILED, "error": ev.ORPHAN_ERROR})
                written = await self._insert_events(
                    session, row.tenant_id, row.id, row.last_seq, [draft]
                )
                published.append((row.id, written))
            await self._settle_running_steps(
                session, [row.workflow_id for row in swept], ev.FAILED, ev.ORPHAN_ERROR
            )
        for run_id, written in published:
            await self._bus.publish(run_id, written)
        return [run_id for run_id, _ in published]

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _fenced(tenant_id: str, run_id: str, token: int) -> tuple[Any, ...]:
        return (
            Run.id == run_id,
            Run.tenant_id == tenant_id,
            Run.token == token,
            Run.status == ev.RUNNING,
        )

    async def _refuse(self, session: AsyncSession, tenant_id: str, run_id: str) -> NoReturn:
        run = await self._run(session, tenant_id, run_id)  # NotFound if not ours
        raise StaleToken(f"stale fencing token: run {run_id} is {run.status}")

    async def _fenced_workflow(
        self, session: AsyncSession, tenant_id: str, run_id: str, token: int
    ) -> str:
        """Lock the run row if the token is current (FOR UPDATE on PostgreSQL)."""
        workflow_id = await session.scalar(
            select(Run.workflow_id).where(*self._fenced(tenant_id, run_id, token)).with_for_update()
        )
        if workflow_id is None:
            await self._refuse(session, tenant_id, run_id)
        return str(workflow_id)

    async def _fenced_append(
        self,
        session: AsyncSession,
        tenant_id: str,
        run_id: str,
        token: int,
        drafts: Sequence[Draft],
    ) -> list[pb.RunEvent]:
        """Allocate `len(drafts)` seqs with the token check in the same statement: gap-free."""
        if not drafts:
            return []
        last_seq = await session.scalar(
            update(Run)
            .where(*self._fenced(tenant_id, run_id, token))
            .values(last_seq=Run.last_seq + len(drafts))
            .returning(Run.last_seq)
            .execution_options(synchronize_session=False)
        )
        if last_seq is None:
            await self._refuse(session, tenant_id, run_id)
        first = last_seq - len(drafts) + 1
        return await self._insert_events(session, tenant_id, run_id, first, drafts)

    @staticmethod
    async def _insert_events(
        session: AsyncSession, tenant_id: str, run_id: str, first_seq: int, drafts: Sequence[Draft]
    ) -> list[pb.RunEvent]:
        rows = (
            await session.scalars(
                insert(RunEvent).returning(RunEvent, sort_by_parameter_order=True),
                [
                    {
                        "run_id": run_id,
                        "tenant_id": tenant_id,
                        "seq": first_seq + i,
                        "type": d.type,
                        "data": d.data,
                    }
                    for i, d in enumerate(drafts)
                ],
            )
        ).all()
        return [convert.event(r) for r in rows]

    @staticmethod
    async def _settle_running_steps(
        session: AsyncSession, workflow_ids: Sequence[str], status: str, error: str
    ) -> None:
        """A finished run leaves no step running: failed with the run, or pending to resume."""
        if not workflow_ids:
            return
        values: dict[str, Any]
        if status == ev.FAILED:
            values = {"status": ev.FAILED, "error": error or "run failed", "finished_at": db_now()}
        else:
            values = {"status": ev.PENDING, "started_at": None, "finished_at": None}
        await session.execute(
            update(Step)
            .where(Step.workflow_id.in_(workflow_ids), Step.status == ev.RUNNING)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    @staticmethod
    async def _workflow(session: AsyncSession, tenant_id: str, workflow_id: str) -> Workflow:
        workflow = await session.scalar(
            select(Workflow).where(Workflow.id == workflow_id, Workflow.tenant_id == tenant_id)
        )
        if workflow is None:
            raise NotFound(f"workflow {workflow_id} not found")
        return workflow

    @staticmethod
    async def _run(session: AsyncSession, tenant_id: str, run_id: str) -> Run:
        run = await session.scalar(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id))
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    @staticmethod
    async def _steps(session: AsyncSession, workflow_id: str) -> list[Step]:
        return list(
            (
                await session.scalars(
                    select(Step).where(Step.workflow_id == workflow_id).order_by(Step.position)
                )
            ).all()
        )

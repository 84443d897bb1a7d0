"""The engine's writes: claim, heartbeat, events, step changes, items, generated steps, finish.

Every write after the claim carries the claim's fencing token and is refused once the token
is stale (the run was swept, cancelled or finished), so a zombie engine changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument, NotFound
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import Run, RunEvent, Step, StepItem
from nyxflow_runs.store.base import Claim, Draft, StoreBase
from nyxflow_runs.store.workflows import step_row
from nyxflow_runs.validation import step_drafts


@dataclass(frozen=True)
class Written:
    events: list[pb.RunEvent]
    pause_requested: bool


class EngineWrites(StoreBase):
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
            started = await self._insert_events(
                session, tenant_id, run_id, won.last_seq, [Draft(ev.RUN_STARTED, {"owner": owner})]
            )
            # The claim hands back the run's whole stream so far (an operation such as a retry
            # recorded its event before the start), so Execute's followers miss nothing.
            earlier = await session.scalars(
                select(RunEvent)
                .where(RunEvent.run_id == run_id, RunEvent.seq < won.last_seq)
                .order_by(RunEvent.seq)
            )
            events = [convert.event(r) for r in earlier.all()] + started
            run = await self._run(session, tenant_id, run_id)
            claim = Claim(True, won.token, await self._run_pb(session, run), events)
        await self._bus.publish(run_id, started)
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
    ) -> Written:
        async with self._sessions.begin() as session:
            written = await self._fenced_append(session, tenant_id, run_id, token, drafts)
        return await self._published(run_id, written)

    async def update_step(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        step_id: str,
        change: runs_pb2.StepChange,
        drafts: Sequence[Draft],
    ) -> Written:
        if change.status not in ev.STEP_STATUSES:
            raise InvalidArgument(f"unknown step status {change.status!r}", field="change.status")
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
            if change.alternatives:
                values.update(
                    alternatives_out=[convert.alternative_dict(a) for a in change.alternatives],
                    selected_index=0,
                )
        async with self._sessions.begin() as session:
            workflow_id = await self._fenced_workflow(session, tenant_id, run_id, token)
            updated = await session.scalar(
                update(Step)
                .where(
                    Step.id == step_id, Step.workflow_id == workflow_id, Step.tenant_id == tenant_id
                )
                .values(**values)
                .returning(Step.id)
                .execution_options(synchronize_session=False)
            )
            if updated is None:
                raise NotFound(f"step {step_id} not found in run {run_id}")
            written = await self._fenced_append(session, tenant_id, run_id, token, drafts)
        return await self._published(run_id, written)

    async def put_step_item(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        step_id: str,
        item: pb.StepItem,
        drafts: Sequence[Draft],
    ) -> Written:
        """One fan-out item's result, as its own row, the moment it is done. Idempotent per
        (step, index): a second write of the same item keeps the first."""
        async with self._sessions.begin() as session:
            workflow_id = await self._fenced_workflow(session, tenant_id, run_id, token)
            step = await self._step(session, tenant_id, step_id)
            if step.workflow_id != workflow_id:
                raise NotFound(f"step {step_id} not found in run {run_id}")
            exists = await session.scalar(
                select(StepItem.id).where(
                    StepItem.step_id == step_id, StepItem.item_index == item.index
                )
            )
            if exists is None:
                session.add(
                    StepItem(
                        tenant_id=tenant_id,
                        step_id=step_id,
                        item_index=item.index,
                        heading=item.heading,
                        output=item.output,
                    )
                )
                try:
                    await session.flush()
                except IntegrityError:
                    raise NotFound(f"step {step_id} not found in run {run_id}") from None
            written = await self._fenced_append(session, tenant_id, run_id, token, drafts)
        return await self._published(run_id, written)

    async def generate_steps(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        after_step_id: str,
        specs: Sequence[pb.StepSpec],
        drafts: Sequence[Draft],
    ) -> Written:
        """Insert auto-generated steps right after `after_step_id`; later steps move down."""
        async with self._sessions.begin() as session:
            workflow_id = await self._fenced_workflow(session, tenant_id, run_id, token)
            steps = await self._steps(session, workflow_id)
            anchor = next((s for s in steps if s.id == after_step_id), None)
            if anchor is None:
                raise NotFound(f"step {after_step_id} not found in run {run_id}")
            names = [s.name for s in steps]
            new = step_drafts(specs, await self._personas(session, tenant_id), earlier=names)
            for s in steps:
                if s.position > anchor.position:
                    s.position += len(new)
            for offset, d in enumerate(new, start=1):
                row = step_row(tenant_id, workflow_id, anchor.position + offset, d)
                row.auto_generated = True
                session.add(row)
            await session.flush()
            written = await self._fenced_append(session, tenant_id, run_id, token, drafts)
        return await self._published(run_id, written)

    async def finish_run(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        status: str,
        error: str,
        drafts: Sequence[Draft],
    ) -> Written:
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
                    pause_requested=False,
                )
                .execution_options(synchronize_session=False)
            )
            await self._settle_running_steps(session, [workflow_id], status, error)
        return await self._published(run_id, written)

    # --- helpers ----------------------------------------------------------------------

    async def _published(self, run_id: str, written: Written) -> Written:
        await self._bus.publish(run_id, written.events)
        return written

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
    ) -> Written:
        """Allocate `len(drafts)` seqs with the token check in the same statement: gap-free."""
        row = (
            await session.execute(
                update(Run)
                .where(*self._fenced(tenant_id, run_id, token))
                .values(last_seq=Run.last_seq + len(drafts))
                .returning(Run.last_seq, Run.pause_requested)
                .execution_options(synchronize_session=False)
            )
        ).first()
        if row is None:
            await self._refuse(session, tenant_id, run_id)
        first = row.last_seq - len(drafts) + 1
        events = await self._insert_events(session, tenant_id, run_id, first, drafts)
        return Written(events, bool(row.pause_requested))

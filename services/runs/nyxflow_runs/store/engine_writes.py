"""The engine's writes: claim, heartbeat, events, step changes, items, generated steps, finish.

Every write after the claim carries the claim's fencing token and is refused once the token
is stale (the run was swept, cancelled or finished), so a zombie engine changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow import constants as kinds
from nyxflow import events as ev
from nyxflow.errors import InvalidArgument, NotFound
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import Run, RunEvent, Step
from nyxflow_runs.store.base import (
    Claim,
    Draft,
    answerable,
    events_budget,
    generated_block,
    started_data,
)
from nyxflow_runs.store.record import Batch, Recording, Written, check_change, check_item
from nyxflow_runs.store.workflows import step_row
from nyxflow_runs.validation import StepDraft, step_drafts


def _batch(ops: Sequence[runs_pb2.WriteOp] = (), events: Sequence[Draft] = ()) -> Batch:
    """Single writes are batches too: one code path for every engine write."""
    return Batch(list(ops), list(events), "", "")


class EngineWrites(Recording):
    async def claim_run(
        self, tenant_id: str, run_id: str, owner: str, ttl_s: float, claim_id: str = ""
    ) -> Claim:
        """The one pending → running transition: a compare-and-set, so only one caller wins
        (and wins again, on a retry with the same `claim_id`, a claim whose answer was lost)."""
        if self._hot is not None:
            claim = await self._hot.claim(tenant_id, run_id, owner, ttl_s, claim_id)
            if claim is not None:
                await self._bus.publish(run_id, claim.events[-1:])
                return claim
        async with self._scoped(tenant_id, write=True) as session:
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
                        last_batch_seq=0,  # the new token's batches count from 1
                    )
                    .returning(Run.token, Run.last_seq)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if won is None:
                run = await self._run(session, tenant_id, run_id)  # NotFound if not ours
                if claim_id and run.status == ev.RUNNING and run.lease_owner == owner:
                    again = await self._claimed_before(session, run, claim_id, ttl_s)
                    if again is not None:
                        return again
                return Claim(False, 0, convert.run(run), [])
            started = await self._insert_events(
                session,
                tenant_id,
                run_id,
                won.last_seq,
                [Draft(ev.RUN_STARTED, started_data(owner, claim_id))],
            )
            # The claim hands back the run's stream so far (an operation such as a retry
            # recorded its event before the start), so Execute's followers miss nothing: as
            # much as fits, and WatchRun serves the rest. An answer that cannot be sent
            # undoes the claim (`answerable`).
            run = await self._run(session, tenant_id, run_id)
            run_pb = answerable(await self._run_pb(session, run))
            earlier, left_out = await self._events_from_start(
                session, run_id, won.last_seq, events_budget(run_pb)
            )
            claim = Claim(True, won.token, run_pb, earlier + started, left_out)
        await self._bus.publish(run_id, started)
        return claim

    async def _claimed_before(
        self, session: AsyncSession, run: Run, claim_id: str, ttl_s: float
    ) -> Claim | None:
        """The claim again if this attempt made it and nothing was written since: its answer
        was lost (a deadline, a dropped connection) and the engine, which never had the token,
        could not have written. Otherwise None: someone else's run.

        Its lease is renewed as a claim's: it ran from the first commit, and the engine
        heartbeats only from now on, so a late answer left it to lapse with the run alive."""
        last = await session.scalar(
            select(RunEvent).where(RunEvent.run_id == run.id, RunEvent.seq == run.last_seq)
        )
        if last is None or last.type != ev.RUN_STARTED:
            return None
        if (last.data or {}).get("claim") != claim_id:
            return None
        if await self._renewed(session, run.tenant_id, run.id, run.token, ttl_s) is None:
            return None  # swept or cancelled since it was read
        run_pb = await self._run_pb(session, run)
        earlier, left_out = await self._events_from_start(
            session, run.id, last.seq, events_budget(run_pb)
        )
        return Claim(True, run.token, run_pb, [*earlier, convert.event(last)], left_out)

    async def heartbeat(self, tenant_id: str, run_id: str, token: int, ttl_s: float) -> float:
        async with self._scoped(tenant_id, write=True) as session:
            expires = await self._renewed(session, tenant_id, run_id, token, ttl_s)
            if expires is None:
                await self._refuse(session, tenant_id, run_id)
        return float(expires or 0.0)

    async def append_events(
        self, tenant_id: str, run_id: str, token: int, drafts: Sequence[Draft]
    ) -> Written:
        return await self.record(tenant_id, run_id, token, _batch(events=drafts))

    async def update_step(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        step_id: str,
        change: runs_pb2.StepChange,
        drafts: Sequence[Draft],
    ) -> Written:
        check_change(change, "change")
        op = runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step_id, change=change))
        return await self.record(tenant_id, run_id, token, _batch([op], drafts))

    async def put_step_item(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        step_id: str,
        item: pb.StepItem,
        drafts: Sequence[Draft],
    ) -> Written:
        """One fan-out item's result, as its own row, the moment it is done."""
        check_item(item, "item")
        op = runs_pb2.WriteOp(item=runs_pb2.ItemWrite(step_id=step_id, item=item))
        return await self.record(tenant_id, run_id, token, _batch([op], drafts))

    async def generate_steps(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        after_step_id: str,
        specs: Sequence[pb.StepSpec],
        drafts: Sequence[Draft],
    ) -> Written:
        """Insert auto-generated steps right after `after_step_id`, in place of those it
        generated before (the engine generates again only from a new output, which makes them
        stale); later steps move."""
        async with self._scoped(tenant_id, write=True) as session:
            workflow_id = await self._fenced_workflow(session, tenant_id, run_id, token)
            steps = await self._steps(session, workflow_id)
            anchor = next((s for s in steps if s.id == after_step_id), None)
            if anchor is None:
                raise NotFound(f"step {after_step_id} not found in run {run_id}")
            replayed = await self._generated_before(session, run_id, steps, anchor, specs)
            if replayed is not None:
                return replayed
            old = generated_block(steps, anchor)
            if old:
                await session.execute(delete(Step).where(Step.id.in_([s.id for s in old])))
                steps = [s for s in steps if s not in old]
            names = [s.name for s in steps]
            personas = await self._personas(session, tenant_id)
            new = step_drafts(specs, personas, earlier=names, generated=True)
            await self._check_falls_back(session, workflow_id, new)
            if len(steps) + len(new) > kinds.MAX_STEPS:
                raise InvalidArgument(
                    f"{len(new)} steps added to the {len(steps)} there are: a workflow holds "
                    f"at most {kinds.MAX_STEPS} steps",
                    field="steps",
                )
            for s in steps:
                if s.position > anchor.position:
                    s.position += len(new) - len(old)
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
        if status not in ev.TERMINAL_EVENT_FOR_STATUS:
            raise InvalidArgument(f"cannot finish a run as {status!r}", field="status")
        terminal = Batch.of([], status, error).drafts
        return await self.record(
            tenant_id, run_id, token, Batch([], [*drafts, *terminal], status, error)
        )

    # --- helpers ----------------------------------------------------------------------

    async def _renewed(
        self, session: AsyncSession, tenant_id: str, run_id: str, token: int, ttl_s: float
    ) -> float | None:
        """The lease from now, by the database's clock, if `token` still holds the run: when
        it now expires, else None."""
        expires: float | None = await session.scalar(
            update(Run)
            .where(*self._fenced(tenant_id, run_id, token))
            .values(lease_expires_at=db_now() + ttl_s)
            .returning(Run.lease_expires_at)
            .execution_options(synchronize_session=False)
        )
        return expires

    async def _check_falls_back(
        self, session: AsyncSession, workflow_id: str, drafts: Sequence[StepDraft]
    ) -> None:
        """A generated check reviews every part: after its synthesis's chain (set by hand to
        the one provider that had credit, say) comes the chain of steps naming none, the
        workflow's or else the tenant's, so that one provider's quota fails no review."""
        defaults = (await self._default_chains(session, [workflow_id])).get(workflow_id, [])
        for draft in drafts:
            own = draft.config.get("providers") or []
            if draft.kind == kinds.CONSISTENCY_CHECK and own and defaults:
                chain = list(dict.fromkeys([*own, *defaults]))[: kinds.MAX_CHAIN]
                draft.config["providers"] = chain

    async def _generated_before(
        self,
        session: AsyncSession,
        run_id: str,
        steps: Sequence[Step],
        anchor: Step,
        specs: Sequence[pb.StepSpec],
    ) -> Written | None:
        """A retry of a generation that committed (its answer was lost): this run generated
        after the anchor already, and the same steps sit right after it. Answered with what
        that generation wrote, instead of generating them twice. (The same names from an
        earlier run are a block to replace: this run's event for the anchor tells them apart.)"""
        wanted = [s.name.strip() for s in specs]
        following = [s for s in steps if s.position > anchor.position][: len(wanted)]
        if not wanted or [s.name for s in following] != wanted:
            return None
        if not all(s.auto_generated for s in following):
            return None
        marks = await session.execute(
            select(RunEvent.seq, RunEvent.data).where(
                RunEvent.run_id == run_id, RunEvent.type == ev.STEPS_GENERATED
            )
        )
        generated = max(
            (m.seq for m in marks if (m.data or {}).get("after_step_id") == anchor.id),
            default=None,
        )
        if generated is None:
            return None
        rows = await session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.seq >= generated)
            .order_by(RunEvent.seq)
        )
        return Written([convert.event(r) for r in rows], False)

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

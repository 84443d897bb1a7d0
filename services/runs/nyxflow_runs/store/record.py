"""The engine's hot path: a batch of step changes, items and events in one transaction.

Statements are built once with bind parameters (SQLAlchemy then caches their compiled form),
and the fencing check, the row lock and the seq allocation are one UPDATE, so a batch costs
one round trip per statement and no ORM bookkeeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, Table, and_, bindparam, case, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow import events as ev
from nyxflow.constants import MAX_SERVED_BY
from nyxflow.errors import FailedPrecondition, InvalidArgument, NotFound, NyxflowError
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import Run, RunEvent, Step, StepItem
from nyxflow_runs.store.base import Draft, StoreBase
from nyxflow_runs.store.hot_path import Entry

runs_t: Table = Run.__table__  # type: ignore[assignment]
steps_t: Table = Step.__table__  # type: ignore[assignment]
items_t: Table = StepItem.__table__  # type: ignore[assignment]
events_t: Table = RunEvent.__table__  # type: ignore[assignment]

_SEQ = bindparam("b_seq", type_=Integer)
FENCE = (
    update(runs_t)
    .where(
        runs_t.c.id == bindparam("b_run_id"),
        runs_t.c.tenant_id == bindparam("b_tenant_id"),
        runs_t.c.token == bindparam("b_token"),
        runs_t.c.status == ev.RUNNING,
        # A batch already applied is not applied again (see `_replayed`): a numbered one at
        # or below the claim's last number (a retry, or a first attempt arriving late, after
        # its retry and later batches), an unnumbered one with the last batch's id.
        or_(
            and_(_SEQ == 0, runs_t.c.last_batch.is_distinct_from(bindparam("b_batch"))),
            runs_t.c.last_batch_seq < _SEQ,
        ),
    )
    .values(
        last_seq=runs_t.c.last_seq + bindparam("b_count"),
        last_batch=bindparam("b_batch"),
        last_batch_seq=case((_SEQ == 0, runs_t.c.last_batch_seq), else_=_SEQ),
    )
    .returning(runs_t.c.workflow_id, runs_t.c.last_seq, runs_t.c.pause_requested)
)
LAST_BATCH = select(
    runs_t.c.last_batch,
    runs_t.c.last_batch_seq,
    runs_t.c.token,
    runs_t.c.last_seq,
    runs_t.c.pause_requested,
    runs_t.c.status,
).where(runs_t.c.id == bindparam("b_run_id"), runs_t.c.tenant_id == bindparam("b_tenant_id"))
_STEP_WHERE = and_(
    steps_t.c.id == bindparam("b_step_id"),
    steps_t.c.workflow_id == bindparam("b_workflow_id"),
)
START_STEP = (
    update(steps_t)
    .where(_STEP_WHERE)
    .values(status=ev.RUNNING, started_at=db_now(), finished_at=None, error=None)
    .returning(steps_t.c.id)
)
END_STEP = (
    update(steps_t)
    .where(_STEP_WHERE)
    .values(
        status=bindparam("b_status"),
        output=bindparam("b_output"),
        error=bindparam("b_error"),
        truncated=bindparam("b_truncated"),
        finish_reason=bindparam("b_finish_reason"),
        input_tokens=bindparam("b_input_tokens"),
        output_tokens=bindparam("b_output_tokens"),
        served_by=bindparam("b_served_by"),
        finished_at=db_now(),
    )
    .returning(steps_t.c.id)
)
SET_ALTERNATIVES = (
    update(steps_t)
    .where(steps_t.c.id == bindparam("b_step_id"))
    .values(alternatives_out=bindparam("b_alternatives"), selected_index=0)
)
STEP_IN_WORKFLOW = select(steps_t.c.id).where(_STEP_WHERE)
_ITEM_WHERE = and_(
    items_t.c.step_id == bindparam("b_step_id"), items_t.c.item_index == bindparam("b_index")
)
ITEM_EXISTS = select(items_t.c.id, items_t.c.input_hash).where(_ITEM_WHERE)
ITEM_VALUES = (
    "heading",
    "output",
    "truncated",
    "input_tokens",
    "output_tokens",
    "input_hash",
    "served_by",
)
REPLACE_ITEM = (
    update(items_t)
    .where(_ITEM_WHERE)
    .values(**{name: bindparam(f"b_{name}") for name in ITEM_VALUES})
)
ITEMS_PAST = delete(items_t).where(
    items_t.c.step_id == bindparam("b_step_id"), items_t.c.item_index >= bindparam("b_count")
)
UNFINISHED_STEPS = (
    select(steps_t.c.name, steps_t.c.status)
    .where(
        steps_t.c.workflow_id == bindparam("b_workflow_id"),
        steps_t.c.status.not_in([ev.COMPLETED, ev.SKIPPED]),
    )
    .order_by(steps_t.c.position)
)
INSERT_EVENTS = insert(events_t).returning(*events_t.c, sort_by_parameter_order=True)
END_RUN = (
    update(runs_t)
    .where(runs_t.c.id == bindparam("b_run_id"))
    .values(
        status=bindparam("b_status"),
        error=bindparam("b_error"),
        finished_at=db_now(),
        lease_owner=None,
        lease_expires_at=None,
        pause_requested=False,
    )
)


@dataclass(frozen=True)
class Written:
    events: list[pb.RunEvent]
    pause_requested: bool


@dataclass(frozen=True)
class Batch:
    """A validated RecordRequest."""

    ops: list[runs_pb2.WriteOp]
    drafts: list[Draft]  # the event ops, in order, then the terminal event if finishing
    finish_status: str
    finish_error: str
    batch_id: str = ""
    batch_seq: int = 0  # its number within the claim; 0: unnumbered (fenced by its id alone)

    @classmethod
    def of(
        cls,
        ops: Sequence[runs_pb2.WriteOp],
        finish_status: str = "",
        finish_error: str = "",
        batch_id: str = "",
        batch_seq: int = 0,
    ) -> Batch:
        drafts: list[Draft] = []
        for i, op in enumerate(ops):
            kind = op.WhichOneof("op")
            if kind == "step":
                check_change(op.step.change, f"ops[{i}].step.change")
            if kind == "item":
                check_item(op.item.item, f"ops[{i}].item.item")
            if kind == "event":
                drafts += Draft.from_pb([op.event], f"ops[{i}].event")
            if kind is None:
                raise InvalidArgument("an op needs step, item or event", field=f"ops[{i}]")
        if finish_status:
            terminal = ev.TERMINAL_EVENT_FOR_STATUS.get(finish_status)
            if terminal is None:
                raise InvalidArgument(
                    f"cannot finish a run as {finish_status!r}", field="finish_status"
                )
            data: dict[str, Any] = {"status": finish_status}
            if finish_error:
                data["error"] = finish_error
            drafts.append(Draft(terminal, data))
        return cls(list(ops), drafts, finish_status, finish_error, batch_id, batch_seq)


class Recording(StoreBase):
    async def record_many(
        self, tenant_id: str, entries: Sequence[Entry]
    ) -> list[Written | NyxflowError]:
        """Many runs' batches at once (the engine's group commit), each answered alone: a
        batch refused (stale token, a foreign step, a bad op) costs only its own run."""
        results: dict[int, Written | NyxflowError] = {}
        if self._hot is not None:
            applied = await self._hot.record_many(tenant_id, entries)
            published = []
            for index, (events, pause) in applied.items():
                results[index] = Written(events, pause)
                published.append((entries[index].run_id, events))
            await self._bus.publish_many(published)
        for index, entry in enumerate(entries):
            if index not in results:
                try:  # the hot path left it out already: straight to the general one
                    results[index] = await self._record_general(
                        tenant_id, entry.run_id, entry.token, entry.batch
                    )
                except NyxflowError as error:
                    results[index] = error
        return [results[i] for i in range(len(entries))]

    async def record(self, tenant_id: str, run_id: str, token: int, batch: Batch) -> Written:
        if self._hot is not None:
            applied = await self._hot.record_many(tenant_id, [Entry(run_id, token, batch)])
            if applied:
                events, pause = applied[0]
                await self._bus.publish(run_id, events)
                return Written(events, pause)
        return await self._record_general(tenant_id, run_id, token, batch)

    async def _record_general(
        self, tenant_id: str, run_id: str, token: int, batch: Batch
    ) -> Written:
        """SQLite, or what the hot path leaves out: a refusal or replay to explain, or an
        order its one statement cannot keep."""
        async with self._sessions.begin() as session:
            fenced = (
                await session.execute(
                    FENCE,
                    {
                        "b_run_id": run_id,
                        "b_tenant_id": tenant_id,
                        "b_token": token,
                        "b_count": len(batch.drafts),
                        # A caller without batch ids gets a fresh one: never taken for a retry.
                        "b_batch": batch.batch_id or uuid.uuid4().hex,
                        "b_seq": batch.batch_seq,
                    },
                )
            ).first()
            if fenced is None:
                replayed = await self._replayed(session, tenant_id, run_id, token, batch)
                if replayed is not None:
                    return replayed
                await self._refuse(session, tenant_id, run_id)
            workflow_id = fenced.workflow_id
            for op in batch.ops:
                kind = op.WhichOneof("op")
                if kind == "step":
                    await self._apply_step(session, run_id, workflow_id, op.step)
                elif kind == "item":
                    await self._apply_item(session, tenant_id, run_id, workflow_id, op.item)
            first = fenced.last_seq - len(batch.drafts) + 1
            events = await self._insert(session, tenant_id, run_id, first, batch.drafts)
            if batch.finish_status == ev.COMPLETED:
                await self._require_all_completed(session, run_id, workflow_id)
            if batch.finish_status:
                await session.execute(
                    END_RUN,
                    {
                        "b_run_id": run_id,
                        "b_status": batch.finish_status,
                        "b_error": batch.finish_error or None,
                    },
                )
                await self._settle_running_steps(
                    session, [workflow_id], batch.finish_status, batch.finish_error
                )
        await self._bus.publish(run_id, events)
        # A run this batch ended has no pause pending (END_RUN cleared it), as the hot path says.
        return Written(events, bool(fenced.pause_requested) and not batch.finish_status)

    @staticmethod
    async def _require_all_completed(session: AsyncSession, run_id: str, workflow_id: str) -> None:
        """A run is `completed` only when each of its steps is: one left pending would be
        skipped for good, since resume is for paused and failed runs. The whole batch is
        refused; the engine then fails the run, which resume can take up."""
        rows = await session.execute(UNFINISHED_STEPS, {"b_workflow_id": workflow_id})
        unfinished = [f"{row.name!r} ({row.status})" for row in rows]
        if unfinished:
            shown = ", ".join(unfinished[:5]) + (", …" if len(unfinished) > 5 else "")
            raise FailedPrecondition(
                f"run {run_id} cannot complete: steps not completed: {shown}",
                field="finish_status",
            )

    @staticmethod
    async def _replayed(
        session: AsyncSession, tenant_id: str, run_id: str, token: int, batch: Batch
    ) -> Written | None:
        """The same batch again, from the same lease: answer what it wrote the first time.
        The engine holds one batch in flight per run, so its events are the run's last ones.
        A numbered batch below the lease's last one is a first attempt arriving late: the
        engine has had its answer from a retry and sent later batches since. It is answered
        as applied, with nothing written: applied now, it would undo what came after it."""
        if not batch.batch_id and not batch.batch_seq:
            return None
        row = (
            await session.execute(LAST_BATCH, {"b_run_id": run_id, "b_tenant_id": tenant_id})
        ).first()
        if row is None or row.token != token:
            return None
        if 0 < batch.batch_seq < row.last_batch_seq:
            return Written([], bool(row.pause_requested))
        if batch.batch_seq and batch.batch_seq != row.last_batch_seq:
            return None  # above it: refused for another reason (the run ended, say)
        if row.last_batch != batch.batch_id:
            return None
        # Swept or requeued since (an event appended, the token kept): the run is no longer
        # this lease's, and the batch's events are no longer the run's last ones.
        if row.status != (batch.finish_status or ev.RUNNING):
            return None
        first = row.last_seq - len(batch.drafts) + 1
        rows = await session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.seq >= first)
            .order_by(RunEvent.seq)
        )
        return Written([convert.event(r) for r in rows.all()], bool(row.pause_requested))

    @staticmethod
    async def _apply_step(
        session: AsyncSession, run_id: str, workflow_id: str, write: runs_pb2.StepWrite
    ) -> None:
        change = write.change
        where = {"b_step_id": write.step_id, "b_workflow_id": workflow_id}
        if change.status == ev.RUNNING:
            updated = (await session.execute(START_STEP, where)).first()
        else:
            values = {
                **where,
                "b_status": change.status,
                # A completed step's output is what its execution produced, even "": NULL is
                # kept for "none yet", which a completed step never has (DESIGN, invariant 5).
                "b_output": change.output
                if change.status == ev.COMPLETED
                else change.output or None,
                "b_error": change.error or None,
                "b_truncated": change.truncated,
                "b_finish_reason": change.finish_reason or None,
                "b_input_tokens": change.input_tokens,
                "b_output_tokens": change.output_tokens,
                "b_served_by": change.served_by or None,
            }
            updated = (await session.execute(END_STEP, values)).first()
            if updated is not None and change.HasField("item_count"):
                # A fan-out's items past its count were made from a longer, earlier source.
                await session.execute(
                    ITEMS_PAST, {"b_step_id": write.step_id, "b_count": change.item_count}
                )
            if updated is not None and change.alternatives:
                alternatives = [convert.alternative_dict(a) for a in change.alternatives]
                await session.execute(
                    SET_ALTERNATIVES, {"b_step_id": write.step_id, "b_alternatives": alternatives}
                )
        if updated is None:
            raise NotFound(f"step {write.step_id} not found in run {run_id}")

    @staticmethod
    async def _apply_item(
        session: AsyncSession,
        tenant_id: str,
        run_id: str,
        workflow_id: str,
        write: runs_pb2.ItemWrite,
    ) -> None:
        """Idempotent per (step, index): a second write of the same item keeps the first.
        One made from another input replaces it (a fan-out redoing an item whose source
        changed), as the hot path's upsert does."""
        where = {"b_step_id": write.step_id, "b_workflow_id": workflow_id}
        if (await session.execute(STEP_IN_WORKFLOW, where)).first() is None:
            raise NotFound(f"step {write.step_id} not found in run {run_id}")
        values = item_values(write.item)
        key = {"b_step_id": write.step_id, "b_index": write.item.index}
        stored = (await session.execute(ITEM_EXISTS, key)).first()
        if stored is None:
            await session.execute(
                insert(items_t),
                {"tenant_id": tenant_id, "step_id": write.step_id, "item_index": write.item.index}
                | values,
            )
        elif stored.input_hash != values["input_hash"]:
            await session.execute(
                REPLACE_ITEM, key | {f"b_{name}": value for name, value in values.items()}
            )

    @staticmethod
    async def _insert(
        session: AsyncSession, tenant_id: str, run_id: str, first: int, drafts: Sequence[Draft]
    ) -> list[pb.RunEvent]:
        if not drafts:
            return []
        rows = await session.execute(
            INSERT_EVENTS,
            [
                {"run_id": run_id, "tenant_id": tenant_id, "seq": first + i, "type": d.type,
                 "data": d.data}
                for i, d in enumerate(drafts)
            ],
        )  # fmt: skip
        return [convert.event_row(r) for r in rows]


# The widths of the columns the step's text goes to: a value too long would fail the whole
# group commit on PostgreSQL (SQLite does not check), so it is refused here, alone.
STEP_TEXT_LIMITS = {"finish_reason": 40, "served_by": MAX_SERVED_BY}
STEP_COUNTS = ("input_tokens", "output_tokens")  # int64 in the message, int32 columns
MAX_INT32 = 2**31 - 1
MAX_INPUT_HASH = 64  # step_items.input_hash's width


def check_change(change: runs_pb2.StepChange, at: str) -> None:
    if change.status not in ev.STEP_STATUSES:
        raise InvalidArgument(f"unknown step status {change.status!r}", field=f"{at}.status")
    if change.HasField("item_count") and change.item_count < 0:
        raise InvalidArgument("must not be negative", field=f"{at}.item_count")
    for name, limit in STEP_TEXT_LIMITS.items():
        values = [getattr(change, name), *(getattr(a, name) for a in change.alternatives)]
        if any(len(v) > limit for v in values):
            raise InvalidArgument(f"must be at most {limit} characters", field=f"{at}.{name}")
    for name in STEP_COUNTS:
        values = [getattr(change, name), *(getattr(a, name) for a in change.alternatives)]
        if any(not 0 <= v <= MAX_INT32 for v in values):
            raise InvalidArgument(f"must be between 0 and {MAX_INT32}", field=f"{at}.{name}")


def item_values(item: pb.StepItem) -> dict[str, Any]:
    """The stored columns of an item write (ITEM_VALUES); no hash is NULL, as rows before it."""
    values = {name: getattr(item, name) for name in ITEM_VALUES}
    values["input_hash"] = item.input_hash or None
    values["served_by"] = item.served_by or None
    return values


def check_item(item: pb.StepItem, at: str) -> None:
    if item.index < 0:
        raise InvalidArgument("must not be negative", field=f"{at}.index")
    if len(item.input_hash) > MAX_INPUT_HASH:
        raise InvalidArgument(
            f"must be at most {MAX_INPUT_HASH} characters", field=f"{at}.input_hash"
        )
    if len(item.served_by) > STEP_TEXT_LIMITS["served_by"]:
        raise InvalidArgument(
            f"must be at most {STEP_TEXT_LIMITS['served_by']} characters",
            field=f"{at}.served_by",
        )
    for name in STEP_COUNTS:
        if not 0 <= getattr(item, name) <= MAX_INT32:
            raise InvalidArgument(f"must be between 0 and {MAX_INT32}", field=f"{at}.{name}")

"""The engine's hot path on PostgreSQL, in asyncpg directly: claim a run, record a batch.

These two calls carry every step of every run, and through SQLAlchemy they cost the runs
process most of a core (statement compilation, result processing, ORM bookkeeping, one round
trip per step change). Here each is a few prepared statements on a pooled connection, set-based
(`unnest`) so that a batch costs the same number of statements whatever it holds.

Only the winning, well-formed cases run here. Whatever needs explaining (a claim lost, a stale
token, a replayed batch) returns None and the caller's general path answers it, so the
refusals and their messages stay in one place. SQLite never comes here.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from nyxflow import events as ev
from nyxflow.errors import NotFound
from nyxflow.personas import BUILTIN_PERSONAS
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.store.base import Claim, Draft

NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"

CLAIM = f"""
UPDATE runs SET status = 'running', token = token + 1, lease_owner = $3,
    lease_expires_at = {NOW} + $4, started_at = {NOW}, last_seq = last_seq + 1
WHERE id = $1 AND tenant_id = $2 AND status = 'pending'
RETURNING *"""

FENCE = """
UPDATE runs SET last_seq = last_seq + $4, last_batch = $5
WHERE id = $1 AND tenant_id = $2 AND token = $3 AND status = 'running'
    AND last_batch IS DISTINCT FROM $5
RETURNING workflow_id, last_seq, pause_requested"""

# The same fence, ending the run in the same statement.
FENCE_FINISH = f"""
UPDATE runs SET last_seq = last_seq + $4, last_batch = $5, status = $6, error = $7,
    finished_at = {NOW}, lease_owner = NULL, lease_expires_at = NULL, pause_requested = false
WHERE id = $1 AND tenant_id = $2 AND token = $3 AND status = 'running'
    AND last_batch IS DISTINCT FROM $5
RETURNING workflow_id, last_seq, pause_requested"""

START_STEPS = f"""
UPDATE steps SET status = 'running', started_at = {NOW}, finished_at = NULL, error = NULL
WHERE workflow_id = $1 AND id = ANY($2::varchar[])
RETURNING id"""

END_STEPS = f"""
UPDATE steps AS s SET status = v.status, output = v.output, error = v.error,
    truncated = v.truncated, finish_reason = v.finish_reason, input_tokens = v.input_tokens,
    output_tokens = v.output_tokens, served_by = v.served_by, finished_at = {NOW},
    alternatives_out = COALESCE(v.alternatives::json, s.alternatives_out),
    selected_index = CASE WHEN v.alternatives IS NULL THEN s.selected_index ELSE 0 END
FROM unnest($2::varchar[], $3::varchar[], $4::text[], $5::text[], $6::bool[], $7::varchar[],
            $8::int[], $9::int[], $10::varchar[], $11::text[])
    AS v(id, status, output, error, truncated, finish_reason, input_tokens, output_tokens,
         served_by, alternatives)
WHERE s.id = v.id AND s.workflow_id = $1
RETURNING s.id"""

STEPS_IN_WORKFLOW = "SELECT count(*) FROM steps WHERE workflow_id = $1 AND id = ANY($2::varchar[])"

# Idempotent per (step, index): a second write of the same item keeps the first.
INSERT_ITEMS = f"""
INSERT INTO step_items (id, tenant_id, step_id, item_index, heading, output, created_at)
SELECT v.id, $1, v.step_id, v.item_index, v.heading, v.output, {NOW}
FROM unnest($2::varchar[], $3::varchar[], $4::int[], $5::text[], $6::text[])
    AS v(id, step_id, item_index, heading, output)
ON CONFLICT (step_id, item_index) DO NOTHING"""

INSERT_EVENTS = f"""
INSERT INTO run_events (run_id, tenant_id, seq, type, data, created_at)
SELECT $1, $2, $3 + v.n - 1, v.type, v.data::json, {NOW}
FROM unnest($4::varchar[], $5::text[]) WITH ORDINALITY AS v(type, data, n)
RETURNING seq, type, data::text AS data, created_at"""

EVENTS_BEFORE = """
SELECT seq, type, data::text AS data, created_at FROM run_events
WHERE run_id = $1 AND seq < $2 ORDER BY seq"""

# A finished run leaves no step running: failed or cancelled with it, else pending again.
SETTLE_FAILED = f"""
UPDATE steps SET status = $2, error = $3, finished_at = {NOW}
WHERE workflow_id = $1 AND status = 'running'"""
SETTLE_PENDING = """
UPDATE steps SET status = 'pending', started_at = NULL, finished_at = NULL
WHERE workflow_id = $1 AND status = 'running'"""

STEPS = """
SELECT s.*, w.default_providers AS workflow_chain, t.default_providers AS tenant_chain
FROM steps s JOIN workflows w ON w.id = s.workflow_id JOIN tenants t ON t.id = w.tenant_id
WHERE s.workflow_id = $1 ORDER BY s.position"""
ITEMS = """
SELECT i.step_id, i.item_index, i.heading, i.output FROM step_items i
JOIN steps s ON s.id = i.step_id WHERE s.workflow_id = $1 ORDER BY i.step_id, i.item_index"""
PERSONAS = "SELECT name, system_prompt FROM personas WHERE tenant_id = $1"


class Row:
    """A record read like the ORM object the converters expect (`row.name`)."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None


def _event(run_id: str, record: asyncpg.Record) -> pb.RunEvent:
    return pb.RunEvent(
        run_id=run_id,
        seq=record["seq"],
        type=record["type"],
        data_json=record["data"],
        created_at=record["created_at"],
    )


@dataclass(frozen=True)
class StepPlan:
    """A batch's step changes as two set-based statements: starts, then ends."""

    starts: list[str]
    ends: list[runs_pb2.StepWrite]

    @classmethod
    def of(cls, ops: Sequence[runs_pb2.WriteOp]) -> StepPlan | None:
        """None when the order matters beyond "start, then end" once per step."""
        starts: list[str] = []
        ends: list[runs_pb2.StepWrite] = []
        ended: set[str] = set()
        for op in ops:
            if op.WhichOneof("op") != "step":
                continue
            write = op.step
            if write.step_id in ended:
                return None
            if write.change.status == ev.RUNNING:
                starts.append(write.step_id)
            else:
                ended.add(write.step_id)
                ends.append(write)
        return cls(starts, ends)


class HotPath:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @classmethod
    def of(cls, engine: AsyncEngine | None) -> HotPath | None:
        if engine is None or engine.dialect.name != "postgresql":
            return None
        return cls(engine)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, borrowed from SQLAlchemy's pool (one pool, one set of
        settings); its JSON codec is the dialect's: text in, Python objects out."""
        async with self._engine.connect() as connection:
            raw = await connection.get_raw_connection()
            db: asyncpg.Connection = raw.driver_connection
            try:
                yield db
            except BaseException:
                if db.is_closed():  # the server went away: keep it out of the pool
                    await connection.invalidate()
                raise

    # --- claim ------------------------------------------------------------------------

    async def claim(self, tenant_id: str, run_id: str, owner: str, ttl_s: float) -> Claim | None:
        """The pending → running compare-and-set; None if it was not won."""
        async with self._connection() as db, db.transaction():
            won = await db.fetchrow(CLAIM, run_id, tenant_id, owner, ttl_s)
            if won is None:
                return None
            seq = won["last_seq"]
            started = await db.fetch(
                INSERT_EVENTS, run_id, tenant_id, seq, [ev.RUN_STARTED],
                [json.dumps({"owner": owner})],
            )  # fmt: skip
            earlier = await db.fetch(EVENTS_BEFORE, run_id, seq)
            steps = await self._steps(db, tenant_id, won["workflow_id"])
        events = [_event(run_id, r) for r in [*earlier, *started]]
        return Claim(True, won["token"], convert.run(Row(won), steps), events)  # type: ignore[arg-type]

    @staticmethod
    async def _steps(db: asyncpg.Connection, tenant_id: str, workflow_id: str) -> list[pb.Step]:
        rows = await db.fetch(STEPS, workflow_id)
        items: dict[str, list[Row]] = {}
        for item in await db.fetch(ITEMS, workflow_id):
            items.setdefault(item["step_id"], []).append(Row(item))
        prompts = {name: p.system_prompt for name, p in BUILTIN_PERSONAS.items()}
        if any(r["persona"] for r in rows):
            own = await db.fetch(PERSONAS, tenant_id)
            prompts.update({r["name"]: r["system_prompt"] for r in own})
        return [
            convert.step(
                Row(r),  # type: ignore[arg-type]
                items.get(r["id"], ()),  # type: ignore[arg-type]
                prompts.get(r["persona"], ""),
                list(r["workflow_chain"] or r["tenant_chain"] or []),
            )
            for r in rows
        ]

    # --- record -----------------------------------------------------------------------

    async def record(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        ops: Sequence[runs_pb2.WriteOp],
        drafts: Sequence[Draft],
        finish_status: str,
        finish_error: str,
        batch_id: str,
    ) -> tuple[list[pb.RunEvent], bool] | None:
        """Apply a batch in one transaction: (its events, pause requested), or None if the
        fence refused it (or the batch needs the general path's ordering)."""
        plan = StepPlan.of(ops)
        if plan is None:
            return None
        fence = (run_id, tenant_id, token, len(drafts), batch_id or uuid.uuid4().hex)
        async with self._connection() as db, db.transaction():
            if finish_status:
                finish = (finish_status, finish_error or None)
                fenced = await db.fetchrow(FENCE_FINISH, *fence, *finish)
            else:
                fenced = await db.fetchrow(FENCE, *fence)
            if fenced is None:
                return None
            workflow_id = fenced["workflow_id"]
            await self._apply_steps(db, run_id, workflow_id, plan)
            await self._insert_items(db, tenant_id, run_id, workflow_id, ops)
            first = fenced["last_seq"] - len(drafts) + 1
            rows = await db.fetch(
                INSERT_EVENTS, run_id, tenant_id, first, [d.type for d in drafts],
                [json.dumps(d.data) for d in drafts],
            ) if drafts else []  # fmt: skip
            if finish_status in (ev.FAILED, ev.CANCELLED):
                error = finish_error or f"run {finish_status}"
                await db.execute(SETTLE_FAILED, workflow_id, finish_status, error)
            elif finish_status:
                await db.execute(SETTLE_PENDING, workflow_id)
        events = sorted((_event(run_id, r) for r in rows), key=lambda e: e.seq)
        return events, bool(fenced["pause_requested"])

    @staticmethod
    async def _apply_steps(
        db: asyncpg.Connection, run_id: str, workflow_id: str, plan: StepPlan
    ) -> None:
        if plan.starts:
            started = await db.fetch(START_STEPS, workflow_id, plan.starts)
            _require_all(run_id, plan.starts, [r["id"] for r in started])
        if plan.ends:
            changes = [w.change for w in plan.ends]
            ended = await db.fetch(
                END_STEPS,
                workflow_id,
                [w.step_id for w in plan.ends],
                [c.status for c in changes],
                [c.output or None for c in changes],
                [c.error or None for c in changes],
                [c.truncated for c in changes],
                [c.finish_reason or None for c in changes],
                [c.input_tokens for c in changes],
                [c.output_tokens for c in changes],
                [c.served_by or None for c in changes],
                [
                    json.dumps([convert.alternative_dict(a) for a in c.alternatives])
                    if c.alternatives
                    else None
                    for c in changes
                ],
            )
            _require_all(run_id, [w.step_id for w in plan.ends], [r["id"] for r in ended])

    @staticmethod
    async def _insert_items(
        db: asyncpg.Connection,
        tenant_id: str,
        run_id: str,
        workflow_id: str,
        ops: Sequence[runs_pb2.WriteOp],
    ) -> None:
        writes = [op.item for op in ops if op.WhichOneof("op") == "item"]
        if not writes:
            return
        step_ids = sorted({w.step_id for w in writes})
        if await db.fetchval(STEPS_IN_WORKFLOW, workflow_id, step_ids) != len(step_ids):
            known = {r["id"] for r in await db.fetch(
                "SELECT id FROM steps WHERE workflow_id = $1 AND id = ANY($2::varchar[])",
                workflow_id, step_ids,
            )}  # fmt: skip
            missing = next(s for s in step_ids if s not in known)
            raise NotFound(f"step {missing} not found in run {run_id}")
        await db.execute(
            INSERT_ITEMS,
            tenant_id,
            [str(uuid.uuid4()) for _ in writes],
            [w.step_id for w in writes],
            [w.item.index for w in writes],
            [w.item.heading for w in writes],
            [w.item.output for w in writes],
        )


def _require_all(run_id: str, wanted: Sequence[str], found: Sequence[str]) -> None:
    """A step id not in the run's workflow refuses the whole batch (the transaction rolls
    back as the error leaves it)."""
    missing = set(wanted) - set(found)
    if missing:
        raise NotFound(f"step {sorted(missing)[0]} not found in run {run_id}")

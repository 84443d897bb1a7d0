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
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from nyxflow import events as ev
from nyxflow.errors import NotFound
from nyxflow.personas import BUILTIN_PERSONAS
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.store.base import Claim

if TYPE_CHECKING:
    from nyxflow_runs.store.record import Batch

NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"

CLAIM = f"""
UPDATE runs SET status = 'running', token = token + 1, lease_owner = $3,
    lease_expires_at = {NOW} + $4, started_at = {NOW}, last_seq = last_seq + 1
WHERE id = $1 AND tenant_id = $2 AND status = 'pending'
RETURNING *"""

# No row when the workflow is not the tenant's or already has an active run: the general
# path then explains (or sweeps a stale run first and tries again).
CREATE_RUN = f"""
INSERT INTO runs (id, tenant_id, workflow_id, status, last_seq, token, pause_requested,
                  created_at)
SELECT $1, w.tenant_id, w.id, 'pending', 0, 0, false, {NOW}
FROM workflows w WHERE w.id = $2 AND w.tenant_id = $3
ON CONFLICT DO NOTHING
RETURNING *"""

# Every statement below takes many runs at once (a group commit: see `record_many`).
FENCE = f"""
UPDATE runs AS r SET last_seq = r.last_seq + v.n, last_batch = v.batch,
    status = COALESCE(v.finish, r.status),
    error = CASE WHEN v.finish IS NULL THEN r.error ELSE v.error END,
    finished_at = CASE WHEN v.finish IS NULL THEN r.finished_at ELSE {NOW} END,
    lease_owner = CASE WHEN v.finish IS NULL THEN r.lease_owner END,
    lease_expires_at = CASE WHEN v.finish IS NULL THEN r.lease_expires_at END,
    pause_requested = v.finish IS NULL AND r.pause_requested
FROM unnest($2::varchar[], $3::bigint[], $4::int[], $5::varchar[], $6::varchar[], $7::text[])
    AS v(id, token, n, batch, finish, error)
WHERE r.id = v.id AND r.tenant_id = $1 AND r.token = v.token AND r.status = 'running'
    AND r.last_batch IS DISTINCT FROM v.batch
RETURNING r.id, r.workflow_id, r.last_seq, r.pause_requested"""

START_STEPS = f"""
UPDATE steps AS s SET status = 'running', started_at = {NOW}, finished_at = NULL, error = NULL
FROM unnest($1::varchar[], $2::varchar[]) AS v(id, workflow_id)
WHERE s.id = v.id AND s.workflow_id = v.workflow_id
RETURNING s.id"""

END_STEPS = f"""
UPDATE steps AS s SET status = v.status, output = v.output, error = v.error,
    truncated = v.truncated, finish_reason = v.finish_reason, input_tokens = v.input_tokens,
    output_tokens = v.output_tokens, served_by = v.served_by, finished_at = {NOW},
    alternatives_out = COALESCE(v.alternatives::json, s.alternatives_out),
    selected_index = CASE WHEN v.alternatives IS NULL THEN s.selected_index ELSE 0 END
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::text[], $5::text[], $6::bool[],
            $7::varchar[], $8::int[], $9::int[], $10::varchar[], $11::text[])
    AS v(id, workflow_id, status, output, error, truncated, finish_reason, input_tokens,
         output_tokens, served_by, alternatives)
WHERE s.id = v.id AND s.workflow_id = v.workflow_id
RETURNING s.id"""

FOREIGN_STEPS = """
SELECT v.id FROM unnest($1::varchar[], $2::varchar[]) AS v(id, workflow_id)
WHERE NOT EXISTS (SELECT 1 FROM steps s WHERE s.id = v.id AND s.workflow_id = v.workflow_id)"""

# Idempotent per (step, index): a second write of the same item keeps the first.
INSERT_ITEMS = f"""
INSERT INTO step_items (id, tenant_id, step_id, item_index, heading, output, created_at)
SELECT v.id, $1, v.step_id, v.item_index, v.heading, v.output, {NOW}
FROM unnest($2::varchar[], $3::varchar[], $4::int[], $5::text[], $6::text[])
    AS v(id, step_id, item_index, heading, output)
ON CONFLICT (step_id, item_index) DO NOTHING"""

INSERT_MANY_EVENTS = f"""
INSERT INTO run_events (run_id, tenant_id, seq, type, data, created_at)
SELECT v.run_id, $1, v.seq, v.type, v.data::json, {NOW}
FROM unnest($2::varchar[], $3::int[], $4::varchar[], $5::text[]) AS v(run_id, seq, type, data)
RETURNING run_id, seq, type, data::text AS data, created_at"""

# A finished run leaves no step running: failed or cancelled with it, else pending again.
SETTLE_FAILED = f"""
UPDATE steps AS s SET status = v.status, error = v.error, finished_at = {NOW}
FROM unnest($1::varchar[], $2::varchar[], $3::text[]) AS v(workflow_id, status, error)
WHERE s.workflow_id = v.workflow_id AND s.status = 'running'"""
SETTLE_PENDING = """
UPDATE steps SET status = 'pending', started_at = NULL, finished_at = NULL
WHERE workflow_id = ANY($1::varchar[]) AND status = 'running'"""

EVENTS_BEFORE = """
SELECT seq, type, data::text AS data, created_at FROM run_events
WHERE run_id = $1 AND seq < $2 ORDER BY seq"""

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

    # --- create and claim ---------------------------------------------------------------

    async def create_run(self, tenant_id: str, workflow_id: str) -> pb.Run | None:
        async with self._connection() as db:
            row = await db.fetchrow(CREATE_RUN, str(uuid.uuid4()), workflow_id, tenant_id)
        return None if row is None else convert.run(Row(row))  # type: ignore[arg-type]

    # --- claim ------------------------------------------------------------------------

    async def claim(self, tenant_id: str, run_id: str, owner: str, ttl_s: float) -> Claim | None:
        """The pending → running compare-and-set; None if it was not won."""
        async with self._connection() as db, db.transaction():
            won = await db.fetchrow(CLAIM, run_id, tenant_id, owner, ttl_s)
            if won is None:
                return None
            seq = won["last_seq"]
            started = await db.fetch(
                INSERT_MANY_EVENTS, tenant_id, [run_id], [seq], [ev.RUN_STARTED],
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

    # --- record ---------------------------------------------------------------------

    async def record_many(
        self, tenant_id: str, entries: Sequence[Entry]
    ) -> dict[int, tuple[list[pb.RunEvent], bool]]:
        """Apply many runs' batches in one transaction, a few statements in all.

        Returns, by entry index, (its events, pause requested) for every batch applied. An
        entry left out was fenced off (stale token, replay) or needs its own transaction (the
        same run twice, an order the set-based statements cannot keep): the caller takes it
        through the general path. A step outside its run's workflow raises NotFound and
        nothing is written."""
        chosen: dict[str, int] = {}
        plans: dict[int, StepPlan] = {}
        for index, entry in enumerate(entries):
            plan = StepPlan.of(entry.batch.ops)
            if plan is not None and entry.run_id not in chosen:
                chosen[entry.run_id] = index
                plans[index] = plan
        if not chosen:
            return {}
        picked = [entries[i] for i in chosen.values()]
        async with self._connection() as db, db.transaction():
            fenced = await db.fetch(
                FENCE,
                tenant_id,
                [e.run_id for e in picked],
                [e.token for e in picked],
                [len(e.batch.drafts) for e in picked],
                [e.batch.batch_id or uuid.uuid4().hex for e in picked],
                [e.batch.finish_status or None for e in picked],
                [e.batch.finish_error or None for e in picked],
            )
            if not fenced:
                return {}
            applied = [
                Applied(chosen[r["id"]], r["workflow_id"], r["last_seq"], r["pause_requested"])
                for r in fenced
            ]
            await _apply_steps(db, entries, plans, applied)
            await _insert_items(db, tenant_id, entries, applied)
            rows = await _insert_events(db, tenant_id, entries, applied)
            await _settle(db, entries, applied)
        events: dict[str, list[pb.RunEvent]] = {}
        for row in rows:
            events.setdefault(row["run_id"], []).append(_event(row["run_id"], row))
        return {
            a.index: (
                sorted(events.get(entries[a.index].run_id, []), key=lambda e: e.seq),
                bool(a.pause_requested),
            )
            for a in applied
        }


@dataclass(frozen=True)
class Entry:
    """One run's batch in a group commit."""

    run_id: str
    token: int
    batch: Batch


@dataclass(frozen=True)
class Applied:
    """An entry the fence let through: where its run's workflow and seqs stand."""

    index: int
    workflow_id: str
    last_seq: int
    pause_requested: bool


async def _apply_steps(
    db: asyncpg.Connection,
    entries: Sequence[Entry],
    plans: dict[int, StepPlan],
    applied: Sequence[Applied],
) -> None:
    starts = [(s, a.workflow_id) for a in applied for s in plans[a.index].starts]
    if starts:
        rows = await db.fetch(START_STEPS, [s for s, _ in starts], [w for _, w in starts])
        _require_all(entries, applied, [s for s, _ in starts], [r["id"] for r in rows])
    ends = [(w, a.workflow_id) for a in applied for w in plans[a.index].ends]
    if not ends:
        return
    changes = [w.change for w, _ in ends]
    rows = await db.fetch(
        END_STEPS,
        [w.step_id for w, _ in ends],
        [workflow_id for _, workflow_id in ends],
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
    _require_all(entries, applied, [w.step_id for w, _ in ends], [r["id"] for r in rows])


async def _insert_items(
    db: asyncpg.Connection, tenant_id: str, entries: Sequence[Entry], applied: Sequence[Applied]
) -> None:
    writes = [
        (op.item, a.workflow_id)
        for a in applied
        for op in entries[a.index].batch.ops
        if op.WhichOneof("op") == "item"
    ]
    if not writes:
        return
    foreign = await db.fetch(
        FOREIGN_STEPS, [w.step_id for w, _ in writes], [wf for _, wf in writes]
    )
    _require_all(entries, applied, [r["id"] for r in foreign], [])
    await db.execute(
        INSERT_ITEMS,
        tenant_id,
        [str(uuid.uuid4()) for _ in writes],
        [w.step_id for w, _ in writes],
        [w.item.index for w, _ in writes],
        [w.item.heading for w, _ in writes],
        [w.item.output for w, _ in writes],
    )


async def _insert_events(
    db: asyncpg.Connection, tenant_id: str, entries: Sequence[Entry], applied: Sequence[Applied]
) -> list[asyncpg.Record]:
    run_ids: list[str] = []
    seqs: list[int] = []
    types: list[str] = []
    data: list[str] = []
    for a in applied:
        entry = entries[a.index]
        first = a.last_seq - len(entry.batch.drafts) + 1
        for offset, d in enumerate(entry.batch.drafts):
            run_ids.append(entry.run_id)
            seqs.append(first + offset)
            types.append(d.type)
            data.append(json.dumps(d.data))
    if not run_ids:
        return []
    rows: list[asyncpg.Record] = await db.fetch(
        INSERT_MANY_EVENTS, tenant_id, run_ids, seqs, types, data
    )
    return rows


async def _settle(
    db: asyncpg.Connection, entries: Sequence[Entry], applied: Sequence[Applied]
) -> None:
    failed = [
        (a.workflow_id, entries[a.index].batch)
        for a in applied
        if entries[a.index].batch.finish_status in (ev.FAILED, ev.CANCELLED)
    ]
    if failed:
        await db.execute(
            SETTLE_FAILED,
            [w for w, _ in failed],
            [b.finish_status for _, b in failed],
            [b.finish_error or f"run {b.finish_status}" for _, b in failed],
        )
    pending = [
        a.workflow_id
        for a in applied
        if entries[a.index].batch.finish_status not in ("", ev.FAILED, ev.CANCELLED)
    ]
    if pending:
        await db.execute(SETTLE_PENDING, pending)


def _require_all(
    entries: Sequence[Entry],
    applied: Sequence[Applied],
    wanted: Sequence[str],
    found: Sequence[str],
) -> None:
    """A step id outside its run's workflow refuses the group (the transaction rolls back as
    the error leaves it); the caller then applies each batch alone, to refuse only that one."""
    missing = set(wanted) - set(found)
    if not missing:
        return
    step_id = sorted(missing)[0]
    run_id = next(
        (
            entries[a.index].run_id
            for a in applied
            for op in entries[a.index].batch.ops
            if (op.step.step_id if op.WhichOneof("op") == "step" else op.item.step_id) == step_id
        ),
        "?",
    )
    raise NotFound(f"step {step_id} not found in run {run_id}")

"""The engine's hot path on PostgreSQL, in asyncpg directly: create, claim and record.

These calls carry every step of every run. Through SQLAlchemy they cost the runs process most
of a core and a round trip per step change; here each is one statement (the claim two: the
compare-and-set, then the read), set-based with `unnest` and data-modifying CTEs, so a group of
many runs' batches costs one round trip and one commit whatever it holds.

Only the well-formed, winning cases run here. Whatever needs explaining, or an order one
statement cannot keep (a claim lost, a stale token, a replayed batch, a step outside the run's
workflow, a run ending with a step still running, `completed` with a step that is not, an item
written again from another input, or a run's batch after one of these), is left out and the
general path (SQLAlchemy, as on SQLite) applies or refuses it, so the rules and messages live
in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from nyxflow import events as ev
from nyxflow.errors import Unavailable
from nyxflow.personas import BUILTIN_PERSONAS
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import convert
from nyxflow_runs.clock import PG_NOW_SQL
from nyxflow_runs.models import Step
from nyxflow_runs.store import base
from nyxflow_runs.store.base import (
    EVENT_OVERHEAD,
    ITEM_LISTING_PER_READ,
    ITEM_OUTPUTS_PER_READ,
    ITEM_OVERHEAD,
    READ_OUTPUTS,
    STEP_OUTPUTS_PER_READ,
    Claim,
    answerable,
    events_budget,
    started_data,
    with_items_left_out,
)

if TYPE_CHECKING:
    from nyxflow_runs.store.record import Batch

NOW = PG_NOW_SQL  # the database's clock, as everywhere (clock.py)
ACQUIRE_TIMEOUT_S = 30.0  # as SQLAlchemy's pool: every connection busy this long is UNAVAILABLE
POOL_IDLE_S = 300.0
POOL_SIZE = 10  # as SQLAlchemy's (db.py), beside it: the general path keeps its own


async def _json_codec(db: asyncpg.Connection) -> None:
    """json as the SQLAlchemy dialect has it, which the converters expect: objects out."""
    await db.set_type_codec(
        "json", encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
    )


async def _no_reset(db: asyncpg.Connection) -> None:
    """No reset query on release (see HotPath)."""


# No row when the workflow is not the tenant's, already has an active run, or has had a run
# (whose steps' saved results the new run carries): the general path then explains, sweeps
# a stale run first and tries again, or carries them. FOR SHARE waits for a
# project's move to another tenant, then sees the workflow is no longer this one's: read
# before the move committed, the run stayed the old tenant's under the new tenant's workflow.
CREATE_RUN = f"""
INSERT INTO runs (id, tenant_id, workflow_id, status, last_seq, token, pause_requested,
                  created_at)
SELECT $1, w.tenant_id, w.id, 'pending', 0, 0, false, {NOW}
FROM workflows w WHERE w.id = $2 AND w.tenant_id = $3
    AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.workflow_id = w.id)
FOR SHARE OF w
ON CONFLICT DO NOTHING
RETURNING *"""

# The pending -> running compare-and-set and its run_started event, in one statement.
CLAIM = f"""
WITH won AS (
    UPDATE runs SET status = 'running', token = token + 1, lease_owner = $3,
        lease_expires_at = {NOW} + $4, started_at = {NOW}, last_seq = last_seq + 1,
        last_batch_seq = 0
    WHERE id = $1 AND tenant_id = $2 AND status = 'pending'
    RETURNING *
), started AS (
    INSERT INTO run_events (run_id, tenant_id, seq, type, data, created_at)
    SELECT id, tenant_id, last_seq, $5, $6::json, {NOW} FROM won
    RETURNING seq, type, data::text AS data, created_at
)
SELECT won.*, started.type AS event_type, started.data AS event_data,
    started.created_at AS event_created_at
FROM won, started"""

# From the first, while the running size stays within the budget ($3, as base.py's
# `_events_from_start` counts it); past it the data is left null and the event out.
EVENTS_BEFORE = """
SELECT seq, type, created_at,
    CASE WHEN sum(octet_length(data::text) + $4) OVER (ORDER BY seq) <= $3
         THEN data::text END AS data
FROM run_events WHERE run_id = $1 AND seq < $2 ORDER BY seq"""

# The steps' own outputs (output and alternatives) within the read's budget, as base.py's
# `_readable_steps` has them: in step order while the running size stays within $5; past it
# they come as null and the step as left out. Then the items' outputs, as base.py's `_items`
# has them: step by step, index by index, until the running total passes what is left ($3 at
# most, and no more than the steps' outputs carried leave of $4); the rest come as null (left
# out). Only the items base.py's `listed_items` lists go in: at most $6 in all, while their
# listing bytes ($7 each more) stay within $8; the step counts the rest (items_left_out).
# Sizes are read off the values' headers; an output left out is never fetched.
STEP_COLUMNS = ", ".join(
    f"s.{c.name}" for c in Step.__table__.columns if c.name not in ("output", "alternatives_out")
)
STEPS = f"""
WITH produced AS (
    SELECT s.id, sum(COALESCE(octet_length(s.output), 0)
                     + COALESCE(octet_length(s.alternatives_out::text), 0))
                 OVER (ORDER BY s.position) <= $5 AS carried,
           COALESCE(octet_length(s.output), 0)
               + COALESCE(octet_length(s.alternatives_out::text), 0) AS bytes
    FROM steps s WHERE s.workflow_id = $1 AND s.tenant_id = $2
), budget AS (
    SELECT GREATEST(0, LEAST($3::bigint,
                             $4::bigint - COALESCE(sum(bytes) FILTER (WHERE carried), 0)))
        AS bytes
    FROM produced
), sized AS (
    SELECT i.id, sum(octet_length(i.output)) OVER w AS running,
           row_number() OVER w <= $6
               AND sum(COALESCE(octet_length(i.heading), 0)
                       + COALESCE(octet_length(i.input_hash), 0)
                       + COALESCE(octet_length(i.served_by), 0) + $7) OVER w <= $8 AS listed
    FROM step_items i JOIN steps s ON s.id = i.step_id
    WHERE s.workflow_id = $1 AND s.tenant_id = $2
    WINDOW w AS (ORDER BY s.position, i.item_index)
)
SELECT {STEP_COLUMNS},
    CASE WHEN p.carried THEN s.output END AS output,
    CASE WHEN p.carried THEN s.alternatives_out END AS alternatives_out,
    NOT p.carried AS output_left_out,
    w.default_providers AS workflow_chain, t.default_providers AS tenant_chain,
    (SELECT json_agg(json_build_object('item_index', i.item_index, 'heading', i.heading,
                                       'output', CASE WHEN z.running <= b.bytes
                                                      THEN i.output END,
                                       'truncated', i.truncated,
                                       'input_tokens', i.input_tokens,
                                       'output_tokens', i.output_tokens,
                                       'input_hash', i.input_hash,
                                       'served_by', i.served_by)
                     ORDER BY i.item_index) FILTER (WHERE z.listed)
     FROM step_items i JOIN sized z ON z.id = i.id WHERE i.step_id = s.id) AS items,
    (SELECT count(*) FILTER (WHERE NOT z.listed)
     FROM step_items i JOIN sized z ON z.id = i.id WHERE i.step_id = s.id) AS items_left_out
FROM steps s JOIN produced p ON p.id = s.id
    JOIN workflows w ON w.id = s.workflow_id JOIN tenants t ON t.id = w.tenant_id
    CROSS JOIN budget b
WHERE s.workflow_id = $1 AND s.tenant_id = $2 ORDER BY s.position"""

PERSONAS = "SELECT name, system_prompt FROM personas WHERE tenant_id = $1"

# The sweeper's and the adopters' polls, several a second in all, nearly always empty: an
# index lookup each, where SQLAlchemy's transaction and statements cost runs a millisecond.
ANY_EXPIRED = f"""
SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'running' AND lease_expires_at < {NOW}
               AND ($1::varchar IS NULL OR workflow_id = $1))"""

REQUEUED = """
SELECT id, tenant_id FROM runs WHERE status = 'pending' AND requeues > 0
ORDER BY created_at LIMIT $1"""

# A group of runs' batches in one statement. Every data-modifying CTE runs to completion
# whether or not the final SELECT reads it, and each joins `fenced`, so a batch the fence
# refuses writes nothing. A batch naming a step outside its run's workflow is fenced off too
# (the general path then refuses it with NOT_FOUND).
RECORD = f"""
WITH refs AS (
    SELECT run_id, step_id FROM unnest($8::varchar[], $9::varchar[]) AS x(run_id, step_id)
    UNION ALL
    SELECT run_id, step_id FROM unnest($21::varchar[], $23::varchar[]) AS x(run_id, step_id)
), foreign_refs AS (
    SELECT x.run_id FROM refs x JOIN runs r ON r.id = x.run_id
    WHERE NOT EXISTS (
        SELECT 1 FROM steps s WHERE s.id = x.step_id AND s.workflow_id = r.workflow_id)
), unfinished AS (
    -- A run ending `completed` with a step that is not, as this batch leaves it (its own
    -- end for the step, else the stored status): the general path refuses it (resume would
    -- find nothing to run and skip that step).
    SELECT v.id FROM unnest($2::varchar[], $6::varchar[]) AS v(id, finish)
    JOIN runs r ON r.id = v.id
    WHERE v.finish = 'completed' AND EXISTS (
        SELECT 1 FROM steps s
        LEFT JOIN unnest($8::varchar[], $9::varchar[], $12::varchar[])
            AS x(run_id, step_id, status) ON x.run_id = v.id AND x.step_id = s.id
        WHERE s.workflow_id = r.workflow_id
            AND COALESCE(x.status, s.status) NOT IN ('completed', 'skipped'))
), fenced AS (
    UPDATE runs AS r SET last_seq = r.last_seq + v.n, last_batch = v.batch,
        last_batch_seq = CASE WHEN v.seq = 0 THEN r.last_batch_seq ELSE v.seq END,
        status = COALESCE(v.finish, r.status),
        error = CASE WHEN v.finish IS NULL THEN r.error ELSE v.error END,
        finished_at = CASE WHEN v.finish IS NULL THEN r.finished_at ELSE {NOW} END,
        lease_owner = CASE WHEN v.finish IS NULL THEN r.lease_owner END,
        lease_expires_at = CASE WHEN v.finish IS NULL THEN r.lease_expires_at END,
        pause_requested = v.finish IS NULL AND r.pause_requested
    FROM unnest($2::varchar[], $3::bigint[], $4::int[], $5::varchar[], $6::varchar[],
                $7::text[], $36::int[]) AS v(id, token, n, batch, finish, error, seq)
    WHERE r.id = v.id AND r.tenant_id = $1 AND r.token = v.token AND r.status = 'running'
        -- Applied already (a retry, or a first attempt arriving after later batches): a
        -- numbered batch at or below the claim's last number, an unnumbered one by its id.
        AND CASE WHEN v.seq = 0 THEN r.last_batch IS DISTINCT FROM v.batch
                 ELSE v.seq > r.last_batch_seq END
        AND r.id NOT IN (SELECT run_id FROM foreign_refs)
        AND r.id NOT IN (SELECT id FROM unfinished)
    RETURNING r.id, r.workflow_id, r.last_seq, r.pause_requested, v.n, v.finish, v.error
), stepped AS (
    UPDATE steps AS s SET
        status = x.status,
        started_at = CASE WHEN x.started THEN {NOW} ELSE s.started_at END,
        finished_at = CASE WHEN x.ended THEN {NOW} END,
        error = CASE WHEN x.ended THEN x.error END,
        output = CASE WHEN x.ended THEN x.output ELSE s.output END,
        truncated = CASE WHEN x.ended THEN x.truncated ELSE s.truncated END,
        finish_reason = CASE WHEN x.ended THEN x.finish_reason ELSE s.finish_reason END,
        input_tokens = CASE WHEN x.ended THEN x.input_tokens ELSE s.input_tokens END,
        output_tokens = CASE WHEN x.ended THEN x.output_tokens ELSE s.output_tokens END,
        served_by = CASE WHEN x.ended THEN x.served_by ELSE s.served_by END,
        alternatives_out = COALESCE(x.alternatives::json, s.alternatives_out),
        selected_index = CASE WHEN x.alternatives IS NULL THEN s.selected_index ELSE 0 END
    FROM unnest($8::varchar[], $9::varchar[], $10::bool[], $11::bool[], $12::varchar[],
                $13::text[], $14::text[], $15::bool[], $16::varchar[], $17::int[], $18::int[],
                $19::varchar[], $20::text[])
        AS x(run_id, id, started, ended, status, output, error, truncated, finish_reason,
             input_tokens, output_tokens, served_by, alternatives)
    JOIN fenced f ON f.id = x.run_id
    WHERE s.id = x.id AND s.workflow_id = f.workflow_id
    RETURNING s.id
), itemized AS (
    -- Idempotent per (step, index): a second write of the same item keeps the first. One
    -- made from another input replaces it (a fan-out redoing an item whose source changed).
    INSERT INTO step_items AS i (id, tenant_id, step_id, item_index, heading, output,
                                 truncated, input_tokens, output_tokens, input_hash,
                                 served_by, created_at)
    SELECT x.id, $1, x.step_id, x.item_index, x.heading, x.output, x.truncated,
        x.input_tokens, x.output_tokens, x.input_hash, x.served_by, {NOW}
    FROM unnest($21::varchar[], $22::varchar[], $23::varchar[], $24::int[], $25::text[],
                $26::text[], $27::bool[], $28::int[], $29::int[], $34::varchar[],
                $37::varchar[])
        AS x(run_id, id, step_id, item_index, heading, output, truncated, input_tokens,
             output_tokens, input_hash, served_by)
    JOIN fenced f ON f.id = x.run_id
    ON CONFLICT (step_id, item_index) DO UPDATE SET heading = excluded.heading,
        output = excluded.output, truncated = excluded.truncated,
        input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
        input_hash = excluded.input_hash, served_by = excluded.served_by
    WHERE i.input_hash IS DISTINCT FROM excluded.input_hash
    RETURNING id
), pruned AS (
    -- A fan-out ending drops its items past its count, made from a longer, earlier source.
    DELETE FROM step_items AS i
    USING unnest($8::varchar[], $9::varchar[], $35::int[]) AS x(run_id, id, item_count)
    JOIN fenced f ON f.id = x.run_id
    WHERE x.item_count IS NOT NULL AND i.step_id = x.id AND i.item_index >= x.item_count
    RETURNING i.id
), evented AS (
    INSERT INTO run_events (run_id, tenant_id, seq, type, data, created_at)
    SELECT x.run_id, $1, f.last_seq - f.n + 1 + x.position, x.type, x.data::json, {NOW}
    FROM unnest($30::varchar[], $31::int[], $32::varchar[], $33::text[])
        AS x(run_id, position, type, data)
    JOIN fenced f ON f.id = x.run_id
    RETURNING run_id, seq, type, data::text AS data, created_at
), settled AS (
    -- A finished run leaves no step running: failed or cancelled with it, else pending
    -- again. The steps this batch wrote are final in `stepped` already.
    UPDATE steps AS s SET
        status = CASE WHEN f.finish IN ('failed', 'cancelled') THEN f.finish ELSE 'pending' END,
        error = CASE WHEN f.finish IN ('failed', 'cancelled')
                     THEN COALESCE(f.error, 'run ' || f.finish) ELSE s.error END,
        finished_at = CASE WHEN f.finish IN ('failed', 'cancelled') THEN {NOW} END,
        started_at = CASE WHEN f.finish IN ('failed', 'cancelled') THEN s.started_at END
    FROM fenced f
    WHERE f.finish IS NOT NULL AND s.workflow_id = f.workflow_id AND s.status = 'running'
        AND s.id <> ALL($9::varchar[])
    RETURNING s.id
)
SELECT f.id AS run_id, f.pause_requested, NULL::int AS seq, NULL::varchar AS type,
    NULL::text AS data, NULL::float8 AS created_at
FROM fenced f
UNION ALL
SELECT e.run_id, NULL, e.seq, e.type, e.data, e.created_at FROM evented e"""


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


@dataclass
class StepRow:
    """One step's writes in a batch, merged: a start, an end, or both (start first)."""

    step_id: str
    started: bool = False
    end: runs_pb2.StepChange | None = None


@dataclass
class Plan:
    """A batch as the rows of the group statement; None from `of` when it needs the general
    path's statement-by-statement order."""

    steps: list[StepRow] = field(default_factory=list)
    items: list[runs_pb2.ItemWrite] = field(default_factory=list)

    @classmethod
    def of(cls, batch: Batch) -> Plan | None:
        rows: dict[str, StepRow] = {}
        items: dict[tuple[str, int], runs_pb2.ItemWrite] = {}
        for op in batch.ops:
            kind = op.WhichOneof("op")
            if kind == "item":
                # The upsert takes one write per item: a second from the same input is kept
                # out (the first stays, as in order). One from another input replaces the
                # first whatever is stored, which the upsert cannot tell: in order, in general.
                first = items.setdefault((op.item.step_id, op.item.item.index), op.item)
                if first.item.input_hash != op.item.item.input_hash:
                    return None
                continue
            if kind != "step":
                continue
            write = op.step
            row = rows.setdefault(write.step_id, StepRow(write.step_id))
            if row.end is not None:
                return None  # written again after it ended
            if write.change.status == ev.RUNNING:
                row.started = True
            else:
                row.end = write.change
        if batch.finish_status and any(r.end is None for r in rows.values()):
            return None  # a step left running as the run ends: settled in order, in general
        counts = {
            r.step_id: r.end.item_count
            for r in rows.values()
            if r.end is not None and r.end.HasField("item_count")
        }
        if any(index >= counts.get(step_id, index + 1) for step_id, index in items):
            # An item at or past the count its step ends with: the statement's prune sees
            # the rows before its upsert and would keep it; in order, the end drops it.
            return None
        return cls(list(rows.values()), list(items.values()))


class HotPath:
    """The hot path's own asyncpg pool. Borrowing SQLAlchemy's cost each call a greenlet
    hand-off on checkout and return; asyncpg's, with no reset query (these statements leave
    no session state behind), costs neither and no round trip."""

    def __init__(
        self,
        dsn: str,
        size: int,
        options: dict[str, str] | None = None,
        timeout_s: float = 0.0,
    ) -> None:
        self._dsn = dsn
        self._options = options or {}
        self._timeout_s = timeout_s or None  # asyncpg's command_timeout: None is none
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    @classmethod
    def of(cls, engine: AsyncEngine | None, timeout_s: float = 0.0) -> HotPath | None:
        """`timeout_s`: as the engine's (db.create_engine), how long a query may go unanswered."""
        if engine is None or engine.dialect.name != "postgresql":
            return None
        # The URL's options go as asyncpg's arguments: in a DSN asyncpg sends the ones it does
        # not parse (`ssl`, as the engine's URL names libpq's sslmode) to the server as
        # settings, which refused them and every hot-path call with them.
        options = {k: v for k, v in engine.url.query.items() if isinstance(v, str)}
        url = engine.url.set(drivername="postgresql", query={})
        return cls(url.render_as_string(hide_password=False), POOL_SIZE, options, timeout_s)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _open(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    **self._options,
                    min_size=1,
                    max_size=self._size,
                    init=_json_codec,
                    reset=_no_reset,
                    max_inactive_connection_lifetime=POOL_IDLE_S,
                    command_timeout=self._timeout_s,
                )
            return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool or await self._open()
        try:
            db = await pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable("the database is busy; try again") from None
        try:
            yield db
        finally:
            await pool.release(db)  # a connection the server dropped is closed, not reused

    # --- create and claim ---------------------------------------------------------------

    async def create_run(self, tenant_id: str, workflow_id: str) -> pb.Run | None:
        async with self._connection() as db:
            try:
                row = await db.fetchrow(CREATE_RUN, str(uuid.uuid4()), workflow_id, tenant_id)
            except asyncpg.ForeignKeyViolationError:
                return None  # the workflow was deleted meanwhile: the general path says so
        return None if row is None else convert.run(Row(row))  # type: ignore[arg-type]

    async def claim(
        self, tenant_id: str, run_id: str, owner: str, ttl_s: float, claim_id: str = ""
    ) -> Claim | None:
        """The pending -> running compare-and-set; None if it was not won. The answer is
        built before the claim commits: one that cannot be sent (`answerable`) undoes it."""
        async with self._connection() as db, db.transaction():
            won = await db.fetchrow(
                CLAIM,
                run_id,
                tenant_id,
                owner,
                ttl_s,
                ev.RUN_STARTED,
                json.dumps(started_data(owner, claim_id)),
            )
            if won is None:
                return None
            seq = won["last_seq"]
            steps = await self._steps(db, tenant_id, won["workflow_id"])
            run = answerable(convert.run(Row(won), steps))  # type: ignore[arg-type]
            # Events before the start: an operation (a retry, say) recorded its own first, and
            # a requeued run has its first engine's.
            earlier = []
            if seq > 1:
                budget = events_budget(run)
                earlier = await db.fetch(EVENTS_BEFORE, run_id, seq, budget, EVENT_OVERHEAD)
        started = pb.RunEvent(
            run_id=run_id,
            seq=seq,
            type=won["event_type"],
            data_json=won["event_data"],
            created_at=won["event_created_at"],
        )
        given = list(itertools.takewhile(lambda r: r["data"] is not None, earlier))
        events = [*(_event(run_id, r) for r in given), started]
        return Claim(True, won["token"], run, events, len(given) < len(earlier))

    @staticmethod
    async def _steps(db: asyncpg.Connection, tenant_id: str, workflow_id: str) -> list[pb.Step]:
        rows = await db.fetch(
            STEPS,
            workflow_id,
            tenant_id,
            ITEM_OUTPUTS_PER_READ,
            READ_OUTPUTS,
            STEP_OUTPUTS_PER_READ,
            base.ITEMS_PER_READ,
            ITEM_OVERHEAD,
            ITEM_LISTING_PER_READ,
        )
        prompts = {name: p.system_prompt for name, p in BUILTIN_PERSONAS.items()}
        if any(r["persona"] for r in rows):
            own = await db.fetch(PERSONAS, tenant_id)
            prompts.update({r["name"]: r["system_prompt"] for r in own})
        return [
            with_items_left_out(
                convert.step(
                    Row(r),  # type: ignore[arg-type]
                    [SimpleNamespace(**i) for i in r["items"] or ()],  # type: ignore[misc]
                    prompts.get(r["persona"], ""),
                    list(r["workflow_chain"] or r["tenant_chain"] or []),
                    left_out=r["output_left_out"],
                ),
                r["items_left_out"],
            )
            for r in rows
        ]

    # --- polls ------------------------------------------------------------------------

    async def any_expired(self, workflow_id: str | None) -> bool:
        """Whether any running run's lease has lapsed (of `workflow_id`, if given)."""
        async with self._connection() as db:
            return bool(await db.fetchval(ANY_EXPIRED, workflow_id))

    async def requeued(self, limit: int) -> list[tuple[str, str]]:
        async with self._connection() as db:
            rows = await db.fetch(REQUEUED, limit)
        return [(row["id"], row["tenant_id"]) for row in rows]

    # --- record -----------------------------------------------------------------------

    async def record_many(
        self, tenant_id: str, entries: Sequence[Entry]
    ) -> dict[int, tuple[list[pb.RunEvent], bool]]:
        """Apply many runs' batches in one statement: by entry index, (its events, pause
        requested) for every batch applied. An entry left out was fenced off or needs the
        general path (see the module's docstring); nothing of it was written."""
        chosen: dict[str, tuple[int, Plan]] = {}
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            # Only a run's first batch: a later one applied here would commit before an
            # earlier one the general path applies (or refuses) after this statement.
            if entry.run_id in seen:
                continue
            seen.add(entry.run_id)
            plan = Plan.of(entry.batch)
            if plan is not None:
                chosen[entry.run_id] = (index, plan)
        if not chosen:
            return {}
        args = _arguments(tenant_id, [(entries[i], plan) for i, plan in chosen.values()])
        async with self._connection() as db:
            rows = await db.fetch(RECORD, *args)
        pause: dict[str, bool] = {}
        events: dict[str, list[pb.RunEvent]] = defaultdict(list)
        for row in rows:
            if row["seq"] is None:
                pause[row["run_id"]] = bool(row["pause_requested"])
            else:
                events[row["run_id"]].append(_event(row["run_id"], row))
        return {
            chosen[run_id][0]: (sorted(events[run_id], key=lambda e: e.seq), paused)
            for run_id, paused in pause.items()
        }


@dataclass(frozen=True)
class Entry:
    """One run's batch in a group commit."""

    run_id: str
    token: int
    batch: Batch


def _arguments(tenant_id: str, chosen: Sequence[tuple[Entry, Plan]]) -> list[Any]:
    """RECORD's parameters: one array per column of each unnest."""
    runs: list[list[Any]] = [[] for _ in range(7)]
    steps: list[list[Any]] = [[] for _ in range(13)]
    items: list[list[Any]] = [[] for _ in range(11)]
    events: list[list[Any]] = [[] for _ in range(4)]
    counts: list[int | None] = []  # per step row: a fan-out's item count as it ends
    for entry, plan in chosen:
        batch = entry.batch
        _append(
            runs,
            (
                entry.run_id,
                entry.token,
                len(batch.drafts),
                batch.batch_id or uuid.uuid4().hex,  # none given: never taken for a replay
                batch.finish_status or None,
                batch.finish_error or None,
                batch.batch_seq,
            ),
        )
        for row in plan.steps:
            _append(steps, _step_values(entry.run_id, row))
            counts.append(
                row.end.item_count if row.end is not None and row.end.HasField("item_count")
                else None
            )  # fmt: skip
        for write in plan.items:
            item = write.item
            _append(
                items,
                (entry.run_id, str(uuid.uuid4()), write.step_id, item.index, item.heading,
                 item.output, item.truncated, item.input_tokens, item.output_tokens,
                 item.input_hash or None, item.served_by or None),
            )  # fmt: skip
        for position, d in enumerate(batch.drafts):
            _append(events, (entry.run_id, position, d.type, d.text))
    # $34 (items' input hashes), $35 (steps' item counts), $36 (batches' numbers) and $37
    # (items' providers) come last: the rest keep their $n.
    return [
        tenant_id, *runs[:6], *steps, *items[:9], *events, items[9], counts, runs[6], items[10]
    ]  # fmt: skip


def _append(columns: list[list[Any]], values: Sequence[Any]) -> None:
    for column, value in zip(columns, values, strict=True):
        column.append(value)


def _step_values(run_id: str, row: StepRow) -> tuple[Any, ...]:
    end = row.end
    if end is None:
        return (run_id, row.step_id, True, False, ev.RUNNING, None, None, False, None, 0, 0,
                None, None)  # fmt: skip
    alternatives = (
        json.dumps([convert.alternative_dict(a) for a in end.alternatives])
        if end.alternatives
        else None
    )
    return (
        run_id,
        row.step_id,
        row.started,
        True,
        end.status,
        end.output if end.status == ev.COMPLETED else end.output or None,  # as record.py
        end.error or None,
        end.truncated,
        end.finish_reason or None,
        end.input_tokens,
        end.output_tokens,
        end.served_by or None,
        alternatives,
    )

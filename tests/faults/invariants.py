"""What must hold in the database after any fault, read directly with SQL (not through the
services under test): checked once every scenario has settled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from tests.support.processes import LEASE_TTL_S

# The sweeper needs up to 2 x TTL after an engine dies, plus its own interval (0.5 s) and slack.
SETTLE_S = 2 * LEASE_TTL_S + 2.0

LEASELESS_ACTIVE = """
    SELECT id, status, lease_owner, lease_expires_at
    FROM runs
    WHERE status IN ('pending', 'running')
      AND (lease_expires_at IS NULL
           OR lease_expires_at <= CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION))
"""
# Runs stores a completed step's output as the engine sent it, and a protobuf string is never
# NULL: a lost output arrives as "". A step may legitimately complete with "" (a fan-out of
# zero items, a tool with nothing to say), but no fault workload has one: every llm step
# streams 5 tokens or more, every fan-out has 13 items, and there are no tool steps.
COMPLETED_WITHOUT_OUTPUT = """
    SELECT id, name, kind FROM steps
    WHERE status = 'completed' AND (output IS NULL OR output = '')
"""
# A workflow's latest run, if completed, left no step to do: resume is not offered for it.
COMPLETED_WITH_STEPS_TO_DO = """
    SELECT r.id, s.name, s.status
    FROM runs r JOIN steps s ON s.workflow_id = r.workflow_id
    WHERE r.status = 'completed' AND s.status NOT IN ('completed', 'skipped')
      AND r.created_at = (SELECT max(l.created_at) FROM runs l WHERE l.workflow_id = r.workflow_id)
"""
# Per run: seqs must be exactly 1..last_seq (count, min, max and distinct all agree).
SEQ_GAPS = """
    SELECT r.id, r.last_seq, count(e.seq) AS n, count(DISTINCT e.seq) AS distinct_n,
           coalesce(min(e.seq), 0) AS lo, coalesce(max(e.seq), 0) AS hi
    FROM runs r LEFT JOIN run_events e ON e.run_id = r.id
    GROUP BY r.id, r.last_seq
    HAVING count(e.seq) <> r.last_seq
        OR count(DISTINCT e.seq) <> count(e.seq)
        OR coalesce(max(e.seq), 0) <> r.last_seq
        OR (count(e.seq) > 0 AND min(e.seq) <> 1)
"""

# A completed fan-out holds one stored item per index, 0..n-1, and n is the number of items its
# source split into: the `total` of its fan_out_progress events (the highest, over all its
# runs) and the `items` of its latest step_completed event. None lost, none twice (the unique
# index forbids twice; a gap, or items missing at the end, would be items lost in a crash and
# never redone). A fan-out whose items were all done by an earlier run has its progress there.
FAN_OUT_ITEMS_MISSING = """
    WITH stored AS (
        SELECT s.id, s.name, count(i.id) AS n,
               coalesce(min(i.item_index), 0) AS lo, coalesce(max(i.item_index), -1) AS hi
        FROM steps s LEFT JOIN step_items i ON i.step_id = s.id
        WHERE s.kind = 'fan_out' AND s.status = 'completed'
        GROUP BY s.id, s.name
    ), announced AS (
        SELECT e.data->>'step_id' AS step_id, max(CAST(e.data->>'total' AS INTEGER)) AS total
        FROM run_events e
        WHERE e.type = 'fan_out_progress'
        GROUP BY e.data->>'step_id'
    ), completed AS (
        SELECT DISTINCT ON (e.data->>'step_id')
               e.data->>'step_id' AS step_id, CAST(e.data->>'items' AS INTEGER) AS items
        FROM run_events e
        WHERE e.type = 'step_completed' AND e.data->>'items' IS NOT NULL
        ORDER BY e.data->>'step_id', e.created_at DESC, e.seq DESC
    )
    SELECT st.id, st.name, st.n, st.lo, st.hi, a.total, c.items
    FROM stored st
    LEFT JOIN announced a ON a.step_id = st.id
    LEFT JOIN completed c ON c.step_id = st.id
    WHERE st.lo <> 0 OR st.hi <> st.n - 1
       OR c.items IS NULL OR st.n <> c.items
       OR st.n <> coalesce(a.total, 0)
"""


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def violations(dsn: str) -> dict[str, list[dict[str, Any]]]:
    connection = await asyncpg.connect(asyncpg_dsn(dsn), timeout=10)
    try:
        found: dict[str, list[dict[str, Any]]] = {}
        for name, sql in (
            ("active run without a live lease", LEASELESS_ACTIVE),
            ("completed step without an output", COMPLETED_WITHOUT_OUTPUT),
            ("completed run with a step not completed", COMPLETED_WITH_STEPS_TO_DO),
            ("event seqs not 1..last_seq", SEQ_GAPS),
            ("completed fan-out with items missing", FAN_OUT_ITEMS_MISSING),
        ):
            rows = [dict(r) for r in await connection.fetch(sql)]
            if rows:
                found[name] = rows
        return found
    finally:
        await connection.close()


async def assert_invariants(dsn: str, settle_s: float = SETTLE_S) -> None:
    """Polls until every invariant holds (the sweeper may still be at work), at most
    `settle_s`, then fails with what is still wrong."""
    deadline = time.monotonic() + settle_s
    while True:
        found = await violations(dsn)
        if not found:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"invariants violated after {settle_s:.1f} s: {found}")
        await asyncio.sleep(0.2)

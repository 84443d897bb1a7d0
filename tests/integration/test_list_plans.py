"""The lists and polls a page or an engine repeats, read by index on PostgreSQL.

The store's own statements (captured as it issues them) are EXPLAINed with sequential scans
disabled: a query no index serves still shows a Seq Scan (or another index, read whole),
whatever the table's size, so a few rows tell what 50,000 would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from nyxflow_runs import migrate
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.store import Store, hot_path
from nyxflow_runs.store.paging import PageEnd
from tests.support.databases import fresh_database

SETUP = [
    "INSERT INTO tenants (id, slug, name) VALUES ('t', 't', 'T'), ('u', 'u', 'U')",
    "INSERT INTO projects (id, tenant_id, name) VALUES ('p1', 't', 'one'), ('p2', 't', 'two')",
    "INSERT INTO workflows (id, tenant_id, project_id, name, consistency_check)"
    " SELECT 'w' || g, 't', 'p' || (g % 2 + 1), 'wf ' || g, false FROM generate_series(1, 100) g",
    # 50 finished runs a workflow; a workflow's runs 100 apart share a created_at in each 200
    "INSERT INTO runs (id, tenant_id, workflow_id, status, last_seq, token, pause_requested,"
    " created_at) SELECT 'r' || g, 't', 'w' || (g % 100 + 1), 'completed', 0, 0, false,"
    " 1e9 + g / 200 FROM generate_series(1, 5000) g",
    "UPDATE runs SET status = 'pending', requeues = 1 WHERE id IN ('r5', 'r6')",
    "ANALYZE",
]
# 300 more workflows, a run each created and not started yet (never re-queued)
WAITING = [
    "INSERT INTO workflows (id, tenant_id, name, consistency_check)"
    " SELECT 'q' || g, 'u', 'q', false FROM generate_series(1, 300) g",
    "INSERT INTO runs (id, tenant_id, workflow_id, status, last_seq, token, pause_requested)"
    " SELECT 'n' || g, 'u', 'q' || g, 'pending', 0, 0, false FROM generate_series(1, 300) g",
    "ANALYZE runs",
]
# Each workflow's latest run, as the list must find it.
LATEST = (
    "SELECT DISTINCT ON (workflow_id) workflow_id, id FROM runs"
    " ORDER BY workflow_id, created_at DESC, id DESC"
)


@dataclass
class Captured:
    engine: AsyncEngine
    store: Store
    statements: list[tuple[str, Any]] = field(default_factory=list)

    async def plan(self, needle: str, *, analyze: bool = False) -> dict[str, Any]:
        """The plan of the one statement captured since the last call that holds `needle`,
        with sequential scans off."""
        (statement, params), *others = [s for s in self.statements if needle in s[0]]
        assert not others, f"{len(others) + 1} statements with {needle!r}"
        plan = await _explain(self.engine, statement, params, analyze=analyze)
        self.statements.clear()
        return plan


async def _explain(
    engine: AsyncEngine, statement: str, params: Any, *, analyze: bool = False
) -> dict[str, Any]:
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    async with engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        found = await connection.exec_driver_sql(f"EXPLAIN ({options}) {statement}", params)
        return _first_plan(found.scalar())


def _first_plan(raw: Any) -> dict[str, Any]:
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _indexes(plan: dict[str, Any]) -> set[str]:
    return {n["Index Name"] for n in _nodes(plan) if "Index Name" in n}


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    return [n["Relation Name"] for n in _nodes(plan) if n["Node Type"] == "Seq Scan"]


def _rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows the plan's scans of `table` read, before any filter dropped some."""
    return sum(
        (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1)
        for n in _nodes(plan)
        if n.get("Relation Name") == table
    )


@pytest.fixture
async def captured(tmp_path: Path) -> AsyncIterator[Captured]:
    async with fresh_database("postgresql", tmp_path) as url:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
            async with engine.begin() as connection:
                for statement in SETUP:
                    await connection.execute(text(statement))
            found = Captured(engine, Store(session_factory(engine), LocalBus()))

            @event.listens_for(engine.sync_engine, "before_cursor_execute")
            def capture(
                conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: Any
            ) -> None:
                found.statements.append((statement, parameters))

            try:
                yield found
            finally:
                await found.store.close()
        finally:
            await engine.dispose()


async def test_a_tenant_s_newest_runs_and_each_older_page_are_read_by_index(
    captured: Captured,
) -> None:
    store = captured.store
    runs, more = await store.list_runs("t", limit=5)
    assert len(runs) == 5 and more is not None
    await _in_index_order(captured)
    await store.list_runs("t", limit=5, before=more)
    await _in_index_order(captured)
    await store.list_runs("t", status="completed", limit=5, before=PageEnd(1e9 + 3, "r30"))
    await _in_index_order(captured)


async def _in_index_order(captured: Captured) -> None:
    """The captured ListRuns read the runs through ix_runs_tenant_created, in its order (no
    sort of all of them)."""
    plan = await captured.plan("FROM runs")
    assert _indexes(plan) == {"ix_runs_tenant_created"}, plan
    assert "Sort" not in [n["Node Type"] for n in _nodes(plan)], plan


async def test_a_project_s_workflows_are_read_by_index(captured: Captured) -> None:
    """ListProjects reads each project's workflow ids: a scan of every workflow a project."""
    projects = await captured.store.list_projects("t")
    assert [len(p.workflow_ids) for p in projects] == [50, 50]
    plans = [
        await _explain(captured.engine, statement, params)
        for statement, params in list(captured.statements)
        if "FROM workflows" in statement
    ]
    assert len(plans) == 2
    for plan in plans:
        assert "ix_workflows_project_id" in _indexes(plan), plan
        assert _seq_scans(plan) == [], plan


async def test_the_workflows_list_reads_only_each_workflow_s_latest_run(
    captured: Captured,
) -> None:
    """The list's status: the latest run of each of 100 workflows, among their 5,000 runs."""
    async with captured.engine.connect() as connection:
        found = await connection.exec_driver_sql(LATEST)
        latest = {row.workflow_id: row.id for row in found}
    captured.statements.clear()
    workflows = await captured.store.list_workflows("t")
    assert {w.id: w.last_run_id for w in workflows} == latest
    plans = [
        await _explain(captured.engine, statement, params, analyze=True)
        for statement, params in list(captured.statements)
        if "FROM runs" in statement
    ]
    assert "ix_runs_workflow_created" in set().union(*map(_indexes, plans)), plans
    assert [_seq_scans(plan) for plan in plans] == [[]] * len(plans), plans
    # a workflow's first index entry, twice (its id, its status): 200, where ranking read
    # 5,000 (and loading the latest by id after, every run of the tenant, at some thousands)
    assert sum(_rows_read(plan, "runs") for plan in plans) <= 2 * 100, plans


async def test_the_adopters_poll_reads_only_requeued_runs(captured: Captured) -> None:
    """hot_path.REQUEUED, the statement the adopters poll several times a second, among
    many runs waiting for their first start."""
    async with captured.engine.begin() as connection:
        for statement in WAITING:
            await connection.exec_driver_sql(statement)
    async with captured.engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        pg = (await connection.get_raw_connection()).driver_connection
        assert pg is not None
        rows = await pg.fetch(hot_path.REQUEUED, 10)
        plan = _first_plan(await pg.fetchval("EXPLAIN (FORMAT JSON) " + hot_path.REQUEUED, 10))
    assert sorted(r["id"] for r in rows) == ["r5", "r6"]
    assert _indexes(plan) == {"ix_runs_requeued"}, plan
    assert _seq_scans(plan) == [], plan

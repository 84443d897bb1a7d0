"""Upgrading a database with rows in it keeps them: on SQLite a column's change copies the
table, drops it and renames the copy, and with foreign keys on the drop cascaded through
every fan-out item."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from nyxflow_runs import migrate
from nyxflow_runs.db import create_engine
from tests.support.databases import fresh_database

ROWS = [
    "INSERT INTO tenants (id, slug, name) VALUES ('t', 't', 't')",
    "INSERT INTO workflows (id, tenant_id, name, consistency_check) VALUES ('w', 't', 'w', false)",
    "INSERT INTO steps (id, tenant_id, workflow_id, position, name, kind, prompt, provider, model,"
    " params, max_tokens, persona, alternatives, auto_continue, config, auto_generated, status,"
    " truncated, input_tokens, output_tokens, selected_index, alternatives_out) VALUES ('s', 't',"
    " 'w', 0, 's', 'fan_out', '', 'local', '', '{}', 10, '', 1, 0, '{}', false, 'completed',"
    " false, 0, 0, 0, '[]')",
    "INSERT INTO step_items (id, tenant_id, step_id, item_index, heading, output)"
    " VALUES ('i', 't', 's', 0, 'h', 'out')",
    "INSERT INTO runs (id, tenant_id, workflow_id, status, last_seq, token, pause_requested)"
    " VALUES ('r', 't', 'w', 'completed', 1, 1, false)",
    "INSERT INTO run_events (run_id, tenant_id, seq, type, data, created_at)"
    " VALUES ('r', 't', 1, 'run_started', '{}', 0)",
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("start", ["0001", "0004", "0007", "0010"])
async def test_an_upgrade_keeps_every_row(tmp_path: Path, backend: str, start: str) -> None:
    async with fresh_database(backend, tmp_path) as url:  # empty: no schema yet
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine, start)
            async with engine.begin() as connection:
                for row in ROWS:
                    await connection.execute(text(row))

            await migrate.upgrade(engine)

            async with engine.connect() as connection:
                for table in ("steps", "step_items", "runs", "run_events"):
                    count = await connection.execute(text(f"SELECT count(*) FROM {table}"))
                    assert count.scalar() == 1, f"the upgrade from {start} lost {table}"
                # An item stored before hashes were kept has none: its input is unknown.
                unknown = await connection.execute(text("SELECT input_hash FROM step_items"))
                assert unknown.scalar() is None
                if backend == "sqlite":  # on again for the connection's next user
                    on = await connection.exec_driver_sql("PRAGMA foreign_keys")
                    assert on.scalar() == 1
            assert await migrate.current_revision(engine) == migrate.head_revision()
        finally:
            await engine.dispose()


async def test_a_workflow_s_runs_are_found_by_index(tmp_path: Path) -> None:
    """A workflow's latest run (the list's status, resume, a retry's carry) and its runs'
    list were found by reading every run of every workflow: slower with each run stored."""
    async with fresh_database("postgresql", tmp_path) as url:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
            async with engine.connect() as connection:
                await connection.exec_driver_sql("SET enable_seqscan = off")
                plan = await connection.exec_driver_sql(
                    "EXPLAIN SELECT id FROM runs WHERE workflow_id = 'w'"
                    " ORDER BY created_at DESC LIMIT 1"
                )
                lines = "\n".join(row[0] for row in plan)
            assert "ix_runs_workflow_created" in lines and "Seq Scan" not in lines, lines
        finally:
            await engine.dispose()

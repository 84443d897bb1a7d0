"""On SQLite the whole upgrade is one transaction holding the write lock: pysqlite emits no
BEGIN before DDL, so each statement committed alone. Two processes migrating one fresh file
(two `nyxflow up`, or `nyxflow db upgrade` beside a starting `up`) both read "no version" and
one died with `table tenants already exists`; a migration that failed half way stayed half
applied, and a failed foreign key check rolled nothing back."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from nyxflow.errors import FailedPrecondition
from nyxflow_runs import migrate
from nyxflow_runs.db import create_engine
from tests.support.databases import BACKENDS, fresh_database

FIRST_TABLE = "CREATE TABLE tenants"  # the first migration's first table


def _after(engine: AsyncEngine, statement: str, then: Callable[[], None]) -> None:
    """Call `then` once the migration has run `statement` (and is still in it)."""

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _pause(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if sql.lstrip().startswith(statement):
            then()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.exec_driver_sql("SELECT name FROM sqlite_master")
        return {row[0] for row in rows}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_second_process_migrating_the_same_fresh_database_waits_for_the_first(
    tmp_path: Path, backend: str
) -> None:
    """The first process stops half way through its migration while the second runs whole:
    the second must wait for the first's lock, then find the schema at head. (PostgreSQL's
    DDL is transactional, and an advisory lock serialises its migrations: env.py.)"""
    async with fresh_database(backend, tmp_path) as url:
        await _two_at_once(url)


async def _two_at_once(url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
    env["NYXFLOW_DATABASE_URL"] = url
    second: list[subprocess.Popen[str]] = []

    def run_the_second_meanwhile() -> None:
        if second:
            return
        second.append(
            subprocess.Popen(
                [sys.executable, "-m", "nyxflow_runs", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        # Unfixed, it created the tables itself and died within this; fixed, it waits on
        # the first's lock (this process stands still meanwhile, as a slow first would).
        with contextlib.suppress(subprocess.TimeoutExpired):
            second[0].wait(10)

    engine = create_engine(url)
    try:
        _after(engine, FIRST_TABLE, run_the_second_meanwhile)
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
        if second and second[0].poll() is None:
            second[0].wait(60)
    assert second, "the migration never created the first table"
    _, stderr = second[0].communicate()
    assert second[0].returncode == 0, stderr[-2000:]


async def test_a_migration_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'nyxflow.db'}")

    def fail() -> None:
        raise RuntimeError("the migration's next statement failed (or the process was killed)")

    try:
        _after(engine, FIRST_TABLE, fail)
        with pytest.raises(RuntimeError):
            await migrate.upgrade(engine)
        assert "tenants" not in await _tables(engine)
        assert await migrate.current_revision(engine) is None
    finally:
        await engine.dispose()
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'nyxflow.db'}")
    try:
        await migrate.upgrade(engine)  # and the next start migrates from scratch
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_a_failed_foreign_key_check_rolls_the_migration_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'nyxflow.db'}")
    try:
        await migrate.upgrade(engine, "0010")
        async with engine.connect() as connection:  # an item whose step is gone
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.exec_driver_sql(
                "INSERT INTO step_items (id, tenant_id, step_id, item_index, heading, output)"
                " VALUES ('i', 't', 'no-such-step', 0, 'h', 'out')"
            )
            await connection.commit()
            await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        with pytest.raises(FailedPrecondition, match="without a parent"):
            await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == "0010"
        async with engine.connect() as connection:  # nor 0011's column, added before it
            columns = await connection.exec_driver_sql(
                "SELECT name FROM pragma_table_info('step_items')"
            )
            assert "input_hash" not in set(columns.scalars())
    finally:
        await engine.dispose()

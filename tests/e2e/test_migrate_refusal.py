"""A schema that is not the one its recorded version says (tables an earlier release's killed
first start left without a version, a migration half applied, another application's
database) is refused in one line by every command that migrates, and left as it was: the
upgrade failed with the driver's traceback."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from nyxflow_runs import migrate
from nyxflow_runs.db import create_engine
from tests.support.databases import fresh_database
from tests.support.ports import free_port

COMMANDS = [
    (["nyxflow.cli.main", "db", "upgrade"], {}),
    (["nyxflow_runs", "migrate"], {}),
    (["nyxflow_runs"], {"NYXFLOW_MIGRATE_ON_START": "true"}),
]
IDS = ["nyxflow-db-upgrade", "runs-migrate", "serve-migrate-on-start"]
Snapshot = Callable[[], Awaitable[list[tuple[object, ...]]]]


def _run(cwd: Path, command: list[str], url: str, env: dict[str, str]) -> tuple[int, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
    environment.update(
        NYXFLOW_RUNS_LISTEN=f"127.0.0.1:{free_port()}", NYXFLOW_DATABASE_URL=url, **env
    )
    done = subprocess.run(
        [sys.executable, "-m", *command],
        env=environment,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )
    return done.returncode, done.stderr


def _sqlite_snapshot(path: Path) -> Snapshot:
    async def snapshot() -> list[tuple[object, ...]]:
        with sqlite3.connect(path) as c:
            return c.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()

    return snapshot


@asynccontextmanager
async def _half_first_start(tmp_path: Path) -> AsyncIterator[tuple[str, Snapshot]]:
    """What an earlier release's first start, killed after its first CREATE TABLE, left."""
    path = tmp_path / "half.db"
    with sqlite3.connect(path) as c:
        c.execute(
            "CREATE TABLE tenants (id VARCHAR(36) NOT NULL PRIMARY KEY, slug VARCHAR(100) "
            "NOT NULL UNIQUE, name VARCHAR(200) NOT NULL, created_at FLOAT NOT NULL)"
        )
    yield f"sqlite+aiosqlite:///{path}", _sqlite_snapshot(path)


@asynccontextmanager
async def _half_0014(tmp_path: Path) -> AsyncIterator[tuple[str, Snapshot]]:
    """At 0013, with 0014's DROP INDEX applied and nothing else of it."""
    path = tmp_path / "half14.db"
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine, "0013")
    finally:
        await engine.dispose()
    with sqlite3.connect(path) as c:
        c.execute("DROP INDEX uq_run_artifacts_run_name")

    async def snapshot() -> list[tuple[object, ...]]:
        with sqlite3.connect(path) as c:
            version = c.execute("SELECT version_num FROM alembic_version").fetchall()
        return [*version, *await _sqlite_snapshot(path)()]

    yield url, snapshot


@asynccontextmanager
async def _foreign_postgresql(tmp_path: Path) -> AsyncIterator[tuple[str, Snapshot]]:
    """NYXFLOW_DATABASE_URL naming another application's database: its own `tenants`."""
    async with fresh_database("postgresql", tmp_path) as url:
        dsn = url.replace("postgresql+asyncpg", "postgresql")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE tenants (id int PRIMARY KEY, label text)")
            await conn.execute("INSERT INTO tenants VALUES (1, 'theirs')")
        finally:
            await conn.close()

        async def snapshot() -> list[tuple[object, ...]]:
            conn = await asyncpg.connect(dsn)
            try:
                tables = await conn.fetch(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' ORDER BY table_name, column_name"
                )
                rows = await conn.fetch("SELECT id, label FROM tenants")
            finally:
                await conn.close()
            return [tuple(r) for r in tables] + [tuple(r) for r in rows]

        yield url, snapshot


CASES = {
    "sqlite-tables-without-a-version": (_half_first_start, "from none to", "already exists"),
    "sqlite-half-applied-0014": (_half_0014, "from 0013 to", "no such index"),
    "postgresql-another-applications-tenants": (_foreign_postgresql, "from none to", "exists"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("command", "env"), COMMANDS, ids=IDS)
async def test_a_schema_unlike_its_version_is_refused_in_one_line_and_left_as_it_was(
    tmp_path: Path, case: str, command: list[str], env: dict[str, str]
) -> None:
    make, upgrade_from, driver_words = CASES[case]
    async with make(tmp_path) as (url, snapshot):
        before = await snapshot()
        code, stderr = await asyncio.to_thread(_run, tmp_path, command, url, env)
        assert code == 1, stderr[-1500:]
        assert "Traceback" not in stderr, stderr[-1500:]
        *logged, refusal = stderr.strip().splitlines()
        for record in logged:  # the service's own log records, nothing else
            json.loads(record)
        assert refusal.startswith("nyxflow runs: the schema upgrade "), refusal
        assert upgrade_from in refusal and driver_words in refusal, refusal
        assert "do not match its schema version" in refusal, refusal
        assert await snapshot() == before

"""Schema migrations (alembic), the same scripts for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from nyxflow.errors import FailedPrecondition

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await refuse_a_newer_schema(engine)
    current = await current_revision(engine)
    target = head_revision() if revision == "head" else revision

    def _upgrade(connection: Connection) -> None:
        # A schema that is not the one its version says (tables an earlier release's killed
        # first start left without a version, an index half dropped, another application's
        # `tenants`) fails in the middle of a script: one line saying so, not a traceback.
        # The failed upgrade rolls back whole (one transaction on either database).
        try:
            command.upgrade(alembic_config(connection), revision)
        except DBAPIError as error:
            raise NotMigrated(
                f"the schema upgrade from {current or 'none'} to {target} failed: "
                f"{_driver_message(error)}: the database's tables do not match its schema "
                "version (half migrated, or another application's database)"
            ) from error

    if engine.dialect.name != "sqlite":
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
        return
    # SQLite alters a column by copying its table, dropping it and renaming the copy: with
    # foreign keys on (db.py), the drop cascades, and every fan-out item of every step went
    # with it. They are off for the migration (a pragma a transaction ignores: set before
    # it), checked after it, and on again for the connection's next user.
    async with engine.connect() as connection:
        await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await connection.commit()
        # pysqlite emits no BEGIN before DDL: each statement committed alone, so a migration
        # that failed (or was killed) half way stayed half applied, and two processes
        # migrating one fresh file both read "no version" and both created the tables. The
        # driver's own transaction handling is off (autocommit, reset when the connection
        # goes back to the pool) and the whole upgrade is one BEGIN IMMEDIATE: the write
        # lock is taken before the version is read, so a second process waits (busy_timeout,
        # db.py) and then finds the schema at head.
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            async with connection.begin():
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
                await connection.run_sync(_upgrade)
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if broken:
                    raise FailedPrecondition(f"the migration left rows without a parent: {broken}")
        finally:
            await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            await connection.commit()


def _driver_message(error: DBAPIError) -> str:
    """The driver's own words, on one line (without the SQL sqlalchemy appends)."""
    return " ".join(str(error.orig).split()) or type(error.orig).__name__


def head_revision() -> str:
    """The revision the code expects the database to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the package ships its migrations
    return head


class NotMigrated(FailedPrecondition):
    """The database's schema is not the one this code needs."""


async def current_revision(engine: AsyncEngine) -> str | None:
    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_current)


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # "Can't locate revision"
        return False


async def refuse_a_newer_schema(engine: AsyncEngine) -> None:
    """A database a later release migrated (the code rolled back): no upgrade can help, and
    alembic's own refusal is a traceback."""
    current = await current_revision(engine)
    if current is not None and not _known(current):
        raise NotMigrated(
            f"the database is at schema {current}, newer than this code (head "
            f"{head_revision()}): run a newer nyxflow"
        )


async def require_current(engine: AsyncEngine) -> None:
    """Refuse to serve on a schema other than the code's: say which command fixes it."""
    await refuse_a_newer_schema(engine)
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise NotMigrated(
            f"the database is at schema {current or 'none'}, this version needs {head}: "
            "run `nyxflow db upgrade` (or `python -m nyxflow_runs migrate`)"
        )

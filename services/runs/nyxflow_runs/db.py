"""The async engine and session factory, tuned per dialect."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession  # re-exported
from sqlalchemy.pool import AsyncAdaptedQueuePool

from nyxflow.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

SETTING = "NYXFLOW_DATABASE_URL"
FORMS = "sqlite+aiosqlite:///path/to/file.db or postgresql://user:password@host/db"
# The form hosts hand out names no driver, or one we do not ship (psycopg): asyncpg it is.
POSTGRES_WITHOUT_ASYNC_DRIVER = ("postgres", "postgresql")
# libpq's and asyncpg's; another was retried for NYXFLOW_DATABASE_WAIT_S as "unreachable"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def database_url(url: str) -> URL:
    """The URL to connect to, or a refusal naming the setting (never quoting the URL: it may
    hold a password)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise InvalidArgument(f"not a database URL; expected {FORMS}", field=SETTING) from None
    if parsed.drivername in POSTGRES_WITHOUT_ASYNC_DRIVER:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername == "postgresql+asyncpg" and "sslmode" in parsed.query:
        # libpq's name, which hosts hand out; asyncpg takes the same values as `ssl`
        ssl = parsed.query["sslmode"]
        parsed = parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": ssl})
    mode = parsed.query.get("ssl") if parsed.drivername == "postgresql+asyncpg" else None
    if isinstance(mode, str) and mode not in SSL_MODES:  # given twice: asyncpg_options says so
        raise InvalidArgument(f"sslmode must be one of {', '.join(SSL_MODES)}", field=SETTING)
    return parsed


# What asyncpg takes from a URL's query as it is (text); libpq's names it lacks are mapped
# (sslmode above, connect_timeout below); any other option was asyncpg's TypeError traceback.
ASYNCPG_TEXT_OPTIONS = frozenset({"ssl", "target_session_attrs"})
ASYNCPG_SECONDS = {"connect_timeout": "timeout", "timeout": "timeout"}


def asyncpg_options(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL with the options asyncpg takes as text, and the connect arguments of the rest."""
    arguments: dict[str, Any] = {}
    for name, value in url.query.items():
        if not isinstance(value, str):
            raise InvalidArgument(f"the option {name!r} is given more than once", field=SETTING)
        if name in ASYNCPG_TEXT_OPTIONS:
            continue
        if name not in ASYNCPG_SECONDS:
            raise InvalidArgument(
                f"the option {name!r} is not one this driver takes (sslmode, connect_timeout, "
                "target_session_attrs)",
                field=SETTING,
            )
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not seconds > 0:  # NaN too
            raise InvalidArgument(f"the option {name!r} must be seconds above 0", field=SETTING)
        arguments[ASYNCPG_SECONDS[name]] = seconds
    return url.difference_update_query(list(ASYNCPG_SECONDS)), arguments


def _async_engine(url: URL, **options: Any) -> AsyncEngine:
    try:
        return create_async_engine(url, **options)
    except (ArgumentError, InvalidRequestError, ImportError):
        # an unknown dialect, a driver not installed, or one that is not async (sqlite://)
        raise InvalidArgument(
            f"no async driver for {url.drivername!r}; expected {FORMS}", field=SETTING
        ) from None


def create_engine(url: str, timeout_s: float = 0.0) -> AsyncEngine:
    """`timeout_s`: how long a PostgreSQL query may go unanswered (0: for ever)."""
    parsed = database_url(url)
    if parsed.get_backend_name() != "sqlite":
        parsed, arguments = (
            asyncpg_options(parsed) if parsed.get_driver_name() == "asyncpg" else (parsed, {})
        )
        if timeout_s > 0 and parsed.get_driver_name() == "asyncpg":
            arguments["command_timeout"] = timeout_s  # asyncpg's default for every query
        # No pre-ping: it costs a round trip per checkout; a dead connection fails the call and
        # is discarded, and the engine retries writes.
        return _async_engine(
            parsed, pool_size=10, max_overflow=10, pool_recycle=1800, connect_args=arguments
        )
    if parsed.database and parsed.database != ":memory:":
        _open_once(Path(parsed.database))
    # Only the runs service opens the file: one connection serialises its writes without
    # SQLITE_BUSY; WAL lets other readers (the CLI, tests) look in meanwhile.
    engine = _async_engine(
        parsed, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0, pool_timeout=60
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # first: switching a fresh file to WAL takes a lock another starting process may hold
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def _open_once(path: Path) -> None:
    """The SQLite file made (and its folder), or a refusal naming the setting: a folder that
    cannot be made was an OSError's traceback. Opened here, in this thread, because
    aiosqlite's failed open leaves its worker posting to the loop a prompt refusal has
    closed: a traceback after the one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = "a file is in the way" if isinstance(error, FileExistsError) else error.strerror
        raise InvalidArgument(
            f"cannot make the SQLite file's folder {path.parent}: {reason}", field=SETTING
        ) from None
    try:
        sqlite3.connect(path).close()
    except sqlite3.Error as error:
        raise _unopenable(path, error) from None


def _unopenable(path: object, reason: object) -> InvalidArgument:
    return InvalidArgument(f"cannot open the SQLite file {path}: {reason}", field=SETTING)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def wait_for_database(engine: AsyncEngine, timeout_s: float) -> None:
    """Start-up waits for the database (it may start after us), then gives up loudly."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return
        except (OSError, DBAPIError) as error:
            if engine.dialect.name == "sqlite":
                # a local file no one else brings up: waiting only delayed the refusal
                reason = error.orig if isinstance(error, DBAPIError) else error
                raise _unopenable(engine.url.database, reason) from None
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"database unreachable for {timeout_s:.0f} s: {error}") from None
            log.warning("waiting for the database", extra={"action": "start", "error": str(error)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_probe_engine(url: str) -> AsyncEngine:
    """One connection of its own for the health check: through the requests' pool, a busy
    runs (every connection taken for 1.5 s) read as a database gone, and went NOT_SERVING, and
    its engines with it, at the peak of load. A connection that died is dropped on its error,
    and the next check opens another."""
    parsed = database_url(url)
    parsed, arguments = (
        asyncpg_options(parsed) if parsed.get_driver_name() == "asyncpg" else (parsed, {})
    )
    return _async_engine(parsed, pool_size=1, max_overflow=0, connect_args=arguments)


async def answers(engine: AsyncEngine) -> bool:
    """Whether the database answers a query now (health after start-up); why not, raised."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (OSError, DBAPIError) as error:
        reason = error.orig if isinstance(error, DBAPIError) else error
        raise Unavailable(f"the database does not answer: {reason}") from None
    return True

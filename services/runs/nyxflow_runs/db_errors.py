"""Database failures as the callers should see them: a lost connection is UNAVAILABLE (the
engine retries its write), not INTERNAL (which would fail the run)."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from nyxflow.errors import NyxflowError, Unavailable

# SQLSTATE classes that mean "try again": connection exceptions (08), operator intervention
# (57: shutting down, starting up, 57P03 "cannot connect now"), and a transaction rolled back
# for another's sake (40: a deadlock, a serialization failure), which would succeed alone.
TRANSIENT_SQLSTATE_CLASSES = ("08", "57", "40")


def _sqlstate(error: DBAPIError) -> str:
    original = error.orig
    code = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    cause = getattr(original, "__cause__", None)
    if code is None and cause is not None:  # SQLAlchemy's asyncpg adapter wraps the real one
        code = getattr(cause, "sqlstate", None)
    return str(code or "")


def _transient_message(sqlstate: str) -> str:
    if sqlstate.startswith("40"):
        return "a concurrent change conflicted with this one; try again"
    return "the database is restarting; try again"


def translate(error: Exception) -> NyxflowError | None:
    if isinstance(error, PoolTimeout):
        return Unavailable("the database is busy; try again")
    if isinstance(error, OperationalError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return Unavailable("the database is unavailable; try again")
    if isinstance(error, DBAPIError) and _sqlstate(error).startswith(TRANSIENT_SQLSTATE_CLASSES):
        return Unavailable(_transient_message(_sqlstate(error)))
    # The hot path (store/hot_path.py) talks to asyncpg directly: its errors arrive unwrapped.
    if isinstance(error, asyncpg.PostgresError) and str(error.sqlstate or "").startswith(
        TRANSIENT_SQLSTATE_CLASSES
    ):
        return Unavailable(_transient_message(str(error.sqlstate)))
    if isinstance(error, asyncpg.InterfaceError) and "closed" in str(error):
        return Unavailable("the database connection was lost; try again")
    if isinstance(error, TimeoutError):  # NYXFLOW_DATABASE_TIMEOUT_S passed with no answer
        return Unavailable("the database did not answer in time; try again")
    if isinstance(error, (ConnectionError, OSError)):
        return Unavailable("the database is unavailable; try again")
    return None

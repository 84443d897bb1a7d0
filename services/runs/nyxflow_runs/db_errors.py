"""Database failures as the callers should see them: a lost connection is UNAVAILABLE (the
engine retries its write), not INTERNAL (which would fail the run)."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from nyxflow.errors import NyxflowError, Unavailable


def translate(error: Exception) -> NyxflowError | None:
    if isinstance(error, PoolTimeout):
        return Unavailable("the database is busy; try again")
    if isinstance(error, OperationalError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return Unavailable("the database is unavailable; try again")
    if isinstance(error, (ConnectionError, OSError)):
        return Unavailable("the database is unavailable; try again")
    return None

"""A lost database connection is UNAVAILABLE (retried by the engine), not INTERNAL."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from nyxflow.errors import Unavailable
from nyxflow_runs.db_errors import translate


def test_connection_failures_are_unavailable() -> None:
    lost = DBAPIError("SELECT 1", {}, ConnectionResetError("reset"), connection_invalidated=True)
    for error in (
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        lost,
        PoolTimeout("pool exhausted"),
        ConnectionRefusedError("refused"),
    ):
        assert isinstance(translate(error), Unavailable), error


def test_other_errors_stay_unknown() -> None:
    assert translate(IntegrityError("INSERT", {}, Exception("duplicate"))) is None
    assert translate(DBAPIError("SELECT", {}, Exception("syntax"))) is None
    assert translate(ValueError("bug")) is None

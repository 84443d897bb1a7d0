"""A lost database connection is UNAVAILABLE (retried by the engine), not INTERNAL."""

from __future__ import annotations

from asyncpg.exceptions import AdminShutdownError, CannotConnectNowError
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


def test_a_restarting_server_is_unavailable() -> None:
    """asyncpg's "the database system is starting up" (57P03), bare or as SQLAlchemy wraps it."""
    starting = CannotConnectNowError("the database system is starting up")
    assert starting.sqlstate == "57P03"
    wrapped = Exception("adapted")
    wrapped.__cause__ = starting
    for orig in (starting, wrapped):
        assert isinstance(translate(DBAPIError("INSERT", {}, orig)), Unavailable)
    shutting = AdminShutdownError("terminating connection due to administrator command")
    assert isinstance(translate(DBAPIError("INSERT", {}, shutting)), Unavailable)


def test_the_hot_paths_bare_asyncpg_errors_are_translated_too() -> None:
    """store/hot_path.py talks to asyncpg directly: its errors arrive unwrapped."""
    from asyncpg.exceptions import ConnectionDoesNotExistError, InterfaceError, UniqueViolationError

    for error in (
        AdminShutdownError("terminating connection due to administrator command"),
        ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        InterfaceError("connection is closed"),
    ):
        assert isinstance(translate(error), Unavailable), error
    assert translate(UniqueViolationError("duplicate key")) is None
    assert (
        translate(InterfaceError("cannot perform operation: another operation is in progress"))
        is None
    )


def test_a_transaction_rolled_back_for_another_is_unavailable() -> None:
    """A deadlock or a serialization failure (class 40) would succeed alone: try again."""
    from asyncpg.exceptions import DeadlockDetectedError, SerializationError

    for error in (DeadlockDetectedError("deadlock detected"), SerializationError("could not")):
        wrapped = Exception("adapted")
        wrapped.__cause__ = error
        for translated in (translate(error), translate(DBAPIError("UPDATE", {}, wrapped))):
            assert isinstance(translated, Unavailable), error
            assert translated.message == "a concurrent change conflicted with this one; try again"

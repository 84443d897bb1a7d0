"""`db_now()`: the database's clock as epoch seconds, so leases never trust a service's clock."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Float


class db_now(FunctionElement[float]):  # noqa: N801 - reads like the SQL function it is
    type = Float()
    inherit_cache = True


# clock_timestamp, not now(): now() is frozen at the start of the transaction.
PG_NOW_SQL = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return PG_NOW_SQL


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"

"""Alembic environment: runs on the connection handed over by nyxflow_runs.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from nyxflow_runs.models import Base

MIGRATION_LOCK = 7_240_001  # pg advisory lock: replicas starting together migrate one at a time


def run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m nyxflow_runs migrate`")
run_migrations(connection)

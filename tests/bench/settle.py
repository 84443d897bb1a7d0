"""A settled database before each measure, as pgbench's."""

from __future__ import annotations

import asyncpg


async def settle(dsn: str) -> None:
    """The last measure's dead rows vacuumed and its dirty pages written. Otherwise autovacuum
    and the checkpointer wake during the next measure, on the same two cores, and their cost
    is counted as its own."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("VACUUM (ANALYZE)")
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()

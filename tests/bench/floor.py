"""The floor: plain asyncpg, one committed write per step state transition, 8 at a time."""

from __future__ import annotations

import asyncio
import time

import asyncpg

WORKERS = 8


async def floor_steps_per_s(dsn: str, steps: int) -> float:
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor "
            "(id int PRIMARY KEY, status text NOT NULL, output text)"
        )
        await setup.execute("TRUNCATE bench_floor")
        await setup.copy_records_to_table(
            "bench_floor", records=[(i, "pending", None) for i in range(steps)]
        )
    finally:
        await setup.close()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(steps):
        queue.put_nowait(i)

    async def worker() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            while not queue.empty():
                step = queue.get_nowait()
                await connection.execute(
                    "UPDATE bench_floor SET status = 'running' WHERE id = $1", step
                )
                await connection.execute(
                    "UPDATE bench_floor SET status = 'completed', output = $2 WHERE id = $1",
                    step,
                    "output " * 8,
                )
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return steps / (time.perf_counter() - started)

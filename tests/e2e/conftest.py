"""One process stack per backend per module: SQLite with the in-process bus,
PostgreSQL with Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from tests.support.databases import BACKENDS, REDIS_URL, fresh_database, unavailable
from tests.support.processes import ProcessStack


def _redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except (redis.RedisError, OSError) as error:
        unavailable("Redis", error)
    return REDIS_URL


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessStack]:
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    database = fresh_database(request.param, tmp)
    loop = asyncio.new_event_loop()
    try:
        url = loop.run_until_complete(database.__aenter__())
        redis_url = _redis_url() if request.param == "postgresql" else None
        stack = ProcessStack(database_url=url, logs=tmp, redis_url=redis_url)
        try:
            stack.start_all()
            yield stack
        finally:
            stack.stop_all()
            for name in ("runs", "engine", "gateway"):
                with contextlib.suppress(FileNotFoundError):
                    errors = [ln for ln in stack.log_text(name).splitlines() if '"error"' in ln]
                    if errors:
                        print(f"--- {name} errors ---", *errors[-20:], sep="\n")
        loop.run_until_complete(database.__aexit__(None, None, None))
    finally:
        loop.close()


@pytest.fixture
async def http(stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client

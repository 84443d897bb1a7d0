"""One process stack per backend per module: SQLite with the in-process bus,
PostgreSQL with Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from tests.support.databases import BACKENDS, REDIS_URL, unavailable
from tests.support.processes import ProcessStack, running_stack


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
    redis_url = _redis_url() if request.param == "postgresql" else None
    with running_stack(request.param, tmp, redis_url) as stack:
        yield stack


@pytest.fixture
async def http(stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client

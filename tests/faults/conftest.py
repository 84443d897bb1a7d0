"""Fault injection on real processes: one PostgreSQL + Redis stack per module, clients for it,
and the test's own PostgreSQL cluster or redis-server where a scenario must break them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from tests.support.databases import REDIS_URL, unavailable
from tests.support.processes import ProcessStack, running_stack

# Hundreds of concurrent streams through one client: no pool limit, no pool timeout.
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=50)
TIMEOUT = httpx.Timeout(60.0, pool=None)


def shared_redis_url() -> str:
    """The shared Redis (never stopped by these tests); a failure on CI, else a skip."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except (redis.RedisError, OSError) as error:
        unavailable("Redis", error)
    return REDIS_URL


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    tmp = tmp_path_factory.mktemp("faults-stack")
    with running_stack("postgresql", tmp, shared_redis_url()) as stack:
        yield stack


@pytest.fixture
async def http(stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT, limits=LIMITS) as c:
        yield c

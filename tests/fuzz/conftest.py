"""Bad-input tests: what every answer to garbage must look like, and the services to send it to.

The rules, for gRPC and HTTP alike: no UNKNOWN / INTERNAL status and no 500, no call left
hanging (every call has a deadline), and every INVALID_ARGUMENT / 400 names its field."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, settings

from nyxflow.auth import bearer_metadata, engine_metadata, internal_metadata
from nyxflow.errors import from_rpc_error
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import admin_pb2_grpc, runs_pb2_grpc
from tests.support.inprocess import ADMIN_KEY, API_KEY, SECRET
from tests.support.processes import ProcessStack, running_stack

T = TypeVar("T")

CALL_TIMEOUT_S = 10.0
# Answers a bad request may get. UNKNOWN, INTERNAL, DEADLINE_EXCEEDED (a hang) never.
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    # CI replays the same examples each time, so that its verdict is about the change, not
    # the draw; a laptop's runs explore new ones (and keep failures in .hypothesis/).
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
    ],
)


async def answer(
    call: Awaitable[T],
    allowed: frozenset[grpc.StatusCode] = REFUSALS,
    broken: Callable[[str], bool] | None = None,
) -> T | None:
    """The call's response, or None when it was refused with an allowed status; a refusal with
    INVALID_ARGUMENT must carry the field as a google.rpc BadRequest violation, and one the
    test broke when it says which (`broken`)."""
    try:
        return await asyncio.wait_for(call, CALL_TIMEOUT_S + 5)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        assert code in allowed, f"{code.name}: {error.details()}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            field = from_rpc_error(error).field
            assert field, f"no field named: {error.details()}"
            assert broken is None or broken(field), f"{field!r} named: {error.details()}"
        return None


def md() -> tuple[tuple[str, str], ...]:
    return bearer_metadata(API_KEY)


def admin_md() -> tuple[tuple[str, str], ...]:
    return bearer_metadata(ADMIN_KEY)


def engine_md() -> tuple[tuple[str, str], ...]:
    """The engine across tenants (adopting requeued runs)."""
    return engine_metadata(SECRET)


def internal_md() -> tuple[tuple[str, str], ...]:
    """The engine writing for a tenant that holds no run."""
    return internal_metadata(SECRET, "00000000-0000-0000-0000-000000000000")


def kw(metadata: tuple[tuple[str, str], ...] | None = None) -> dict[str, Any]:
    return {"metadata": metadata if metadata is not None else md(), "timeout": CALL_TIMEOUT_S}


@pytest.fixture
async def channel(runs_addr: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(runs_addr, options=CHANNEL_OPTIONS) as chan:
        yield chan


@pytest.fixture
def runs(channel: grpc.aio.Channel) -> runs_pb2_grpc.RunsStub:
    return runs_pb2_grpc.RunsStub(channel)


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(channel)


@pytest.fixture(scope="package")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    """The three services as real processes on SQLite, shared by the HTTP tests here."""
    tmp: Path = tmp_path_factory.mktemp("fuzz-stack")
    with running_stack("sqlite", tmp, None) as stack:
        yield stack

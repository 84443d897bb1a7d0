"""The runs and engine services embedded in the test's event loop, on real loopback gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from nyxflow.auth import bearer_metadata
from nyxflow.client import EngineClient, RunsClient, open_channel
from nyxflow_engine.service import serve as serve_engine
from nyxflow_engine.settings import EngineSettings
from nyxflow_runs.service import serve as serve_runs
from nyxflow_runs.settings import RunsSettings
from tests.support.ports import free_port

API_KEY = "test-key"
SECRET = "test-internal-secret"
ADMIN_KEY = "test-admin-key"


@contextlib.asynccontextmanager
async def embedded(
    serve: Coroutine[Any, Any, None], ready: asyncio.Event, stop: asyncio.Event
) -> AsyncIterator[None]:
    task = asyncio.create_task(serve)
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises the start-up error
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def runs_service(database_url: str, **overrides: Any) -> AsyncIterator[RunsSettings]:
    values: dict[str, Any] = {
        "database_url": database_url,
        "runs_listen": f"127.0.0.1:{free_port()}",
        "api_key": API_KEY,
        "admin_key": ADMIN_KEY,
        "migrate_on_start": True,
        "internal_secret": SECRET,
        "sweep_interval_s": 0.2,
        "watch_poll_s": 0.5,
        "redis_url": None,
    }
    settings = RunsSettings(**{**values, **overrides})
    ready, stop = asyncio.Event(), asyncio.Event()
    async with embedded(serve_runs(settings, ready=ready, stop=stop), ready, stop):
        yield settings


@contextlib.asynccontextmanager
async def engine_service(
    runs_addr: str, *, stop: asyncio.Event | None = None, **overrides: Any
) -> AsyncIterator[EngineSettings]:
    """An engine in this process; setting `stop` drains it as SIGTERM would."""
    values: dict[str, Any] = {
        "runs_addr": runs_addr,
        "engine_listen": f"127.0.0.1:{free_port()}",
        "internal_secret": SECRET,
        "lease_ttl_s": 3.0,
        "heartbeat_s": 0.5,
        "write_retry_s": 5.0,
        "shutdown_grace_s": 3.0,
    }
    settings = EngineSettings(**{**values, **overrides})
    ready, stop = asyncio.Event(), stop or asyncio.Event()
    async with embedded(serve_engine(settings, ready=ready, stop=stop), ready, stop):
        yield settings


@dataclass
class Clients:
    runs: RunsClient
    engine: EngineClient | None
    runs_channel: grpc.aio.Channel

    def as_key(self, api_key: str) -> RunsClient:
        return RunsClient(self.runs_channel, bearer_metadata(api_key))


@contextlib.asynccontextmanager
async def clients(runs_addr: str, engine_addr: str | None = None) -> AsyncIterator[Clients]:
    runs_channel = open_channel(runs_addr)
    engine_channel = open_channel(engine_addr) if engine_addr else None
    md = bearer_metadata(API_KEY)
    try:
        yield Clients(
            RunsClient(runs_channel, md),
            EngineClient(engine_channel, md) if engine_channel else None,
            runs_channel,
        )
    finally:
        await runs_channel.close()
        if engine_channel is not None:
            await engine_channel.close()


@contextlib.asynccontextmanager
async def runs_and_engine(
    database_url: str, *, stop: asyncio.Event | None = None
) -> AsyncIterator[Clients]:
    """runs and an engine in this process, and clients of both; setting `stop` drains the
    engine as SIGTERM would."""
    async with (
        runs_service(database_url) as runs_settings,
        engine_service(runs_settings.runs_listen, stop=stop) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
    ):
        yield api

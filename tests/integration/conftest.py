"""Fixtures of the runs service's integration tests: a client on the embedded service, a
direct view of the same database, and the gateway's app over it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from typer.testing import CliRunner, Result

from nyxflow.cli.main import app as cli_app
from nyxflow_gateway.app import create_app
from nyxflow_gateway.settings import GatewaySettings
from tests.support.direct import Direct, direct
from tests.support.fake_providers import FakeProviders, fake_providers
from tests.support.inprocess import API_KEY, SECRET, Clients, clients
from tests.support.ports import free_port
from tests.support.provider_runs import engine_on_fake


@pytest.fixture
async def runs(runs_addr: str) -> AsyncIterator[Clients]:
    async with clients(runs_addr) as c:
        yield c


@pytest.fixture
async def db(runs_addr: str, database_url: str) -> AsyncIterator[Direct]:
    """The same database, read without the service (runs_addr first: it migrates)."""
    async with direct(database_url) as d:
        yield d


@pytest.fixture
async def gateway(runs_addr: str) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's app on the real runs service, called in process."""
    settings = GatewaySettings(
        runs_addr=runs_addr, engine_addr=f"127.0.0.1:{free_port()}", internal_secret=SECRET
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as http,
    ):
        yield http


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviders]:
    """A loopback server speaking each provider's wire format, for the SDKs' base URLs."""
    async with fake_providers() as server:
        yield server


@pytest.fixture
async def fake_api(runs_addr: str, fake: FakeProviders) -> AsyncIterator[Clients]:
    """Runs plus an engine whose providers all point at the fake server."""
    async with engine_on_fake(runs_addr, fake.base_url) as c:
        yield c


CliCall = Callable[..., Awaitable[Result]]


@pytest.fixture
def nyxflow(runs_addr: str, monkeypatch: pytest.MonkeyPatch) -> CliCall:
    """`nyxflow …` against the embedded runs service, in a thread: the CLI runs an event loop
    of its own."""
    monkeypatch.setenv("NYXFLOW_RUNS_ADDR", runs_addr)
    monkeypatch.setenv("NYXFLOW_API_KEY", API_KEY)

    async def call(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, cli_app, list(args))

    return call

"""How the CLI reaches the services: settings, channels, and errors as exit codes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, EngineClient, RunsClient, open_channel
from nyxflow.errors import InvalidArgument, NyxflowError
from nyxflow.settings import CommonSettings

P = ParamSpec("P")
T = TypeVar("T")
err = Console(stderr=True)
USAGE_ERROR = 2


class CliSettings(CommonSettings):
    api_key: str = "dev-key"
    admin_key: str = ""


@dataclass
class Clients:
    runs: RunsClient
    engine: EngineClient


@contextlib.asynccontextmanager
async def connect() -> AsyncIterator[Clients]:
    settings = CliSettings()
    md = bearer_metadata(settings.api_key)
    async with open_channel(settings.runs_addr) as runs, open_channel(settings.engine_addr) as eng:
        yield Clients(RunsClient(runs, md, settings.rpc_timeout_s), EngineClient(eng, md))


@contextlib.asynccontextmanager
async def connect_admin() -> AsyncIterator[AdminClient]:
    settings = CliSettings()
    if not settings.admin_key:
        raise InvalidArgument("set NYXFLOW_ADMIN_KEY to the runs service's admin key", field="env")
    async with open_channel(settings.runs_addr) as runs:
        yield AdminClient(runs, bearer_metadata(settings.admin_key))


def run_async(func: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Run an async command; a service error is printed plainly, never as a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(func(*args, **kwargs))  # type: ignore[arg-type]
        except NyxflowError as error:
            where = f"{error.field}: " if error.field else ""
            err.print(f"[red]error:[/] {where}{error.message}")
            raise typer.Exit(USAGE_ERROR if isinstance(error, InvalidArgument) else 1) from None

    return wrapper

"""How the CLI reaches the services: settings, channels, and errors as exit codes (the
services' own refusals to start too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import ParamSpec, TypeVar

import typer
from pydantic import Field, ValidationError
from pydantic_settings import SettingsError
from rich.errors import ConsoleError

from nyxflow.auth import Metadata, bearer_metadata
from nyxflow.cli.render import console, line
from nyxflow.client import AdminClient, EngineClient, RunsClient, open_channel
from nyxflow.errors import InvalidArgument, NyxflowError, Unauthenticated, Unavailable
from nyxflow.settings import CommonSettings

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=CommonSettings)
err = console(stderr=True)
USAGE_ERROR = 2


class CliSettings(CommonSettings):
    api_key: str = "dev-key"
    admin_key: str = ""
    # A followed run's Execute stream silent this long is left for runs' WatchRun (as the
    # gateway does): a frozen engine holds it open without a word until gRPC's keepalive.
    execute_silence_s: float = Field(default=15.0, gt=0)


def load_settings(cls: type[S]) -> S:
    """The settings, or a usage error naming the variable: `NYXFLOW_RPC_TIMEOUT_S=ten`."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    try:
        return cls()
    except ValidationError as error:
        first = error.errors()[0]
        name = "_".join(str(part) for part in first["loc"]).upper()
        raise InvalidArgument(first["msg"], field=f"{prefix}{name}") from None
    except SettingsError as error:
        # a list or map setting that is not JSON; only the message names the field
        named = re.search(r'field "(\w+)"', str(error))
        field = f"{prefix}{named[1].upper()}" if named else "env"
        raise InvalidArgument('not JSON (a list is written ["a", "b"])', field=field) from None


def one_line(error: NyxflowError) -> str:
    text = f"{error.field}: {error.message}" if error.field else error.message
    if isinstance(error, Unavailable) and error.transport_text:
        text += f" ({error.transport_text})"  # the addresses it names are the user's settings
    return text


@contextlib.contextmanager
def refusal_to_start(service: str) -> Iterator[None]:
    """A service that cannot start (a bad setting, a port taken, no database) exits with one
    line saying why, not a traceback."""
    try:
        yield
    except NyxflowError as error:
        if logging.getLogger().handlers:  # before logs.configure it would print the line twice
            logging.getLogger(f"nyxflow_{service}").error(
                one_line(error), extra={"action": "start"}
            )
        sys.exit(f"nyxflow {service}: {one_line(error)}")


def key_metadata(key: str, setting: str) -> Metadata:
    """Refused here, naming the setting: gRPC's own refusal is a traceback naming neither."""
    try:
        return bearer_metadata(key)
    except Unauthenticated as error:
        raise InvalidArgument(error.message, field=setting) from None


@dataclass
class Clients:
    runs: RunsClient
    engine: EngineClient
    execute_silence_s: float = 15.0  # an Execute stream this silent is left for WatchRun


@contextlib.asynccontextmanager
async def connect() -> AsyncIterator[Clients]:
    settings = load_settings(CliSettings)
    md = key_metadata(settings.api_key, "NYXFLOW_API_KEY")
    async with open_channel(settings.runs_addr) as runs, open_channel(settings.engine_addr) as eng:
        yield Clients(
            RunsClient(runs, md, settings.rpc_timeout_s),
            EngineClient(eng, md),
            settings.execute_silence_s,
        )


@contextlib.asynccontextmanager
async def connect_admin() -> AsyncIterator[AdminClient]:
    settings = load_settings(CliSettings)
    if not settings.admin_key:
        raise InvalidArgument("set NYXFLOW_ADMIN_KEY to the runs service's admin key", field="env")
    md = key_metadata(settings.admin_key, "NYXFLOW_ADMIN_KEY")
    async with open_channel(settings.runs_addr) as runs:
        yield AdminClient(runs, md)


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """A service error, a bad setting or argument, or a failing file or socket is printed as
    one line and an exit code, never as a traceback."""
    try:
        yield
    except NyxflowError as error:
        err.print(line(("error:", "red"), " ", one_line(error)))
        raise typer.Exit(USAGE_ERROR if isinstance(error, InvalidArgument) else 1) from None
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or str(error) or type(error).__name__
        err.print(line(("error:", "red"), " ", where + reason))
        raise typer.Exit(1) from None
    except ConsoleError as error:
        # rich refused to print something: one line, not a traceback in the middle of a run
        err.print(line(("error:", "red"), f" the output could not be printed: {error}"))
        raise typer.Exit(1) from None


def run_async(func: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Run an async command with plain errors."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with plain_errors():
            for name, value in kwargs.items():
                require_utf8(name, value)
            return asyncio.run(func(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def require_utf8(name: str, value: object) -> None:
    """Bytes not UTF-8 in argv arrive as lone surrogates, which no protobuf string can hold."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str) and not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                raise InvalidArgument("not valid UTF-8", field=name) from None

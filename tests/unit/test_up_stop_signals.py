"""How `nyxflow up` and runs take stop signals: `up` raises the first one only, so that a second
cannot cut its stop short; runs started by `up` stops only once the engine is gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from nyxflow.cli import main
from nyxflow.cli.connection import err, load_settings
from nyxflow.cli.supervisor import Supervisor
from nyxflow.errors import InvalidArgument
from nyxflow.grpc_server import stop_after
from nyxflow_runs.settings import RunsSettings

HANDLED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@pytest.fixture(autouse=True)
def _handlers_restored() -> Iterator[None]:
    """`up` leaves its handlers in place for the rest of its process: not for pytest's."""
    before = {sig: signal.getsignal(sig) for sig in HANDLED}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


class Services:
    """Services up at once, stopped by a signal while `up` watches them; `again` is sent
    while `up` says "stopping…" and once more while it stops them."""

    def __init__(self, first: signal.Signals) -> None:
        self.env = {"NYXFLOW_ADMIN_KEY": "k"}
        self.first = first
        self.stopped = False

    def start(self, _name: str) -> None:
        pass

    def running_check(self, _name: str) -> Any:
        return lambda: None

    def dead(self) -> list[str]:
        os.kill(os.getpid(), self.first)
        return []

    def stop(self) -> None:
        os.kill(os.getpid(), self.first)  # systemd's SIGTERM to the unit again, say
        self.stopped = True


@pytest.mark.parametrize("again", HANDLED, ids=lambda s: s.name)
@pytest.mark.parametrize("first", HANDLED, ids=lambda s: s.name)
def test_a_second_stop_signal_while_up_begins_to_stop_is_ignored(
    monkeypatch: pytest.MonkeyPatch, first: signal.Signals, again: signal.Signals
) -> None:
    """A SIGTERM or SIGHUP that came while `up` printed "stopping…" was raised out of it: a
    traceback and exit code 1."""
    services = Services(first)
    said: list[object] = []
    monkeypatch.setattr(Supervisor, "with_shared_secret", lambda _port: services)
    monkeypatch.setattr(main, "wait_grpc_serving", lambda *a, **k: None)
    monkeypatch.setattr(main, "wait_http_ok", lambda *a, **k: None)
    monkeypatch.setattr(main, "_announce", lambda *a, **k: None)

    def print_then_signal(*objects: Any, **_kwargs: Any) -> None:
        said.extend(objects)
        if objects == ("stopping…",):
            os.kill(os.getpid(), again)  # arrives now, before the stop begins

    monkeypatch.setattr(err, "print", print_then_signal)
    main._up(demo=False, start_timeout=1)  # neither an exception nor typer.Exit(1)
    assert said == ["stopping…"]
    assert services.stopped


def test_a_service_that_died_on_its_own_is_reported_with_how() -> None:
    """The OOM killer's SIGKILL read as "engine exited", as if it had been asked to."""
    killed = subprocess.Popen([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    killed.wait(60)
    failed.wait(60)
    services = Supervisor({}, children={"engine": killed, "runs": failed})
    assert services.how_ended(["engine", "runs"]) == (
        "engine exited (killed by SIGKILL), runs exited (exit code 3)"
    )


@pytest.mark.parametrize("address", ["engine", "127.0.0.1", ":50052", "host:0", "host:port"])
def test_runs_refuses_an_engine_address_it_could_not_watch(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("NYXFLOW_STOP_AFTER", address)
    with pytest.raises(InvalidArgument) as refused:
        load_settings(RunsSettings)
    assert refused.value.field == "NYXFLOW_STOP_AFTER"
    assert "expected the engine's host:port" in refused.value.message


def test_runs_refuses_a_negative_wait_for_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NYXFLOW_STOP_AFTER", "127.0.0.1:50052")
    monkeypatch.setenv("NYXFLOW_STOP_AFTER_WITHIN_S", "-1")
    with pytest.raises(InvalidArgument) as refused:
        load_settings(RunsSettings)
    assert refused.value.field == "NYXFLOW_STOP_AFTER_WITHIN_S"


@contextlib.asynccontextmanager
async def stopped_after_engine() -> AsyncIterator[asyncio.Server]:
    """A stand-in engine, listening; the handlers `stop_after` installs are removed after."""
    engine = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    try:
        yield engine
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        engine.close()


def watch(engine: asyncio.Server, within_s: float) -> asyncio.Event:
    stop = asyncio.Event()
    stop_after(stop, f"127.0.0.1:{engine.sockets[0].getsockname()[1]}", within_s)
    return stop


async def test_sigterm_stops_only_once_the_address_no_longer_answers() -> None:
    """systemd signals runs and the engine at once: runs serves on while the engine, pausing
    its runs through it, still answers."""
    async with stopped_after_engine() as engine:
        stop = watch(engine, within_s=600)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second one changes nothing
        await asyncio.sleep(1)  # a few of its looks at the engine
        assert not stop.is_set()
        engine.close()
        await engine.wait_closed()
        await asyncio.wait_for(stop.wait(), 60)


async def test_sigterm_stops_after_the_bound_if_the_address_still_answers() -> None:
    async with stopped_after_engine() as engine:
        stop = watch(engine, within_s=0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 60)

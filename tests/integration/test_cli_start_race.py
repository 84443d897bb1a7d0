"""`nyxflow run start` when someone else (a browser opening the run) starts the run between
its creation and the CLI's own start: the run is under way, so this is no error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from nyxflow import events as ev
from nyxflow.cli.main import app
from nyxflow.client import RunsClient
from nyxflow.v1 import common_pb2 as pb
from tests.support.eventually import eventually
from tests.support.inprocess import API_KEY, Clients, clients
from tests.support.workflows import llm_step


@pytest.fixture
def browser_starts_each_new_run(
    runs_addr: str, engine_addr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run the CLI creates is started by another caller before the CLI starts it."""
    original = RunsClient.create_run

    async def created_then_opened(self: RunsClient, *args: Any, **kwargs: Any) -> pb.Run:
        run = await original(self, *args, **kwargs)
        async with clients(runs_addr, engine_addr) as browser:
            assert browser.engine is not None
            events = browser.engine.execute(run.id)
            assert (await anext(events)).type == ev.RUN_STARTED
            await events.aclose()  # the browser stops following; the run goes on
        return run

    monkeypatch.setattr(RunsClient, "create_run", created_then_opened)
    monkeypatch.setenv("NYXFLOW_RUNS_ADDR", runs_addr)
    monkeypatch.setenv("NYXFLOW_ENGINE_ADDR", engine_addr)
    monkeypatch.setenv("NYXFLOW_API_KEY", API_KEY)


async def _cli(*args: str) -> Result:
    # In a thread: the CLI runs an event loop of its own.
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


async def _status(api: Clients, run_id: str) -> str:
    return (await api.runs.get_run(run_id)).status


@pytest.mark.usefixtures("browser_starts_each_new_run")
async def test_run_start_prints_the_run_it_created(api: Clients) -> None:
    workflow = await api.runs.create_workflow("raced", [llm_step("a", "x", tokens=5)])

    started = await _cli("run", "start", workflow.id)

    assert started.exit_code == 0, (started.stdout, started.stderr)
    run_id = started.stdout.strip()
    await eventually(lambda: _status(api, run_id), ev.COMPLETED.__eq__, what="the run completed")


@pytest.mark.usefixtures("browser_starts_each_new_run")
async def test_run_start_follow_watches_the_run_to_its_end(api: Clients) -> None:
    workflow = await api.runs.create_workflow("raced", [llm_step("a", "x", tokens=5)])

    followed = await _cli("run", "start", workflow.id, "--follow", "--json")

    assert followed.exit_code == 0, (followed.stdout, followed.stderr)
    lines = followed.stdout.splitlines()
    assert '"type": "run_started"' in lines[0] and '"type": "run_completed"' in lines[-1]

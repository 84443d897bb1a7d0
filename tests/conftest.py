"""Fixtures shared by every tier: databases on both backends, embedded services, clients."""

from __future__ import annotations

import asyncio
import asyncio.runners
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.databases import BACKENDS, fresh_database
from tests.support.inprocess import Clients, clients, engine_service, runs_service

CANCEL_S = 15.0  # for the tasks a test left behind to end once cancelled
STUCK: list[str] = []  # what ignored it, for the run's summary


def _cancel_all_tasks_in_bounded_time(loop: asyncio.AbstractEventLoop) -> None:
    """As asyncio's own at a test's end, but bounded: a task that ignores its cancellation
    had that teardown wait until the test timed out, naming nothing. Now its stack is kept
    for the run's summary, and the run goes on without it."""
    left = asyncio.all_tasks(loop)
    if not left:
        return
    for task in left:
        task.cancel()
    _, stuck = loop.run_until_complete(asyncio.wait(left, timeout=CANCEL_S))
    for task in stuck:
        stack = io.StringIO()
        task.print_stack(file=stack)
        STUCK.append(f"ignored its cancellation for {CANCEL_S:g} s: {task!r}\n{stack.getvalue()}")
    for task in left - stuck:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "a task failed as the test ended",
                    "exception": task.exception(),
                    "task": task,
                }
            )


asyncio.runners._cancel_all_tasks = _cancel_all_tasks_in_bounded_time  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for report in STUCK:
        terminalreporter.write_line(report)


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def runs_addr(database_url: str) -> AsyncIterator[str]:
    async with runs_service(database_url) as settings:
        yield settings.runs_listen


@pytest.fixture
async def engine_addr(runs_addr: str) -> AsyncIterator[str]:
    async with engine_service(runs_addr) as settings:
        yield settings.engine_listen


@pytest.fixture
async def api(runs_addr: str, engine_addr: str) -> AsyncIterator[Clients]:
    async with clients(runs_addr, engine_addr) as c:
        yield c

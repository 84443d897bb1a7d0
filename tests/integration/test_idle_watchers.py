"""Idle watchers cost the runs service one read per poll, whatever their number: each poll
reads every watched run's last seq and status at once, and a watcher reads its run only once
it moved. Each used to read its run's status and a page of events on every poll: thousands of
quiet watchers kept the service busy enough to starve the engines' heartbeats."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import delete, event
from sqlalchemy.engine import Engine

from nyxflow.errors import NotFound
from nyxflow_runs.models import Run
from tests.support.direct import Direct
from tests.support.inprocess import Clients, clients, runs_service
from tests.support.workflows import chain

POLL_S = 0.2
RUNS = 50
WATCHERS_PER_RUN = 4  # 200 watchers
WINDOW_POLLS = 5
READS = {"runs": re.compile(r"\bFROM runs\b"), "events": re.compile(r"\bFROM run_events\b")}


@contextmanager
def counting_reads() -> Iterator[Counter[str]]:
    """Counts the statements reading runs and their events, on every engine in this process
    (the embedded service's only, here)."""
    reads: Counter[str] = Counter()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        for name, pattern in READS.items():
            if pattern.search(statement):
                reads[name] += 1

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield reads
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


async def drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


async def test_idle_watchers_cost_one_read_per_poll(database_url: str) -> None:
    async with (
        runs_service(database_url, watch_poll_s=POLL_S, sweep_interval_s=3600.0) as settings,
        clients(settings.runs_listen) as api,
    ):
        run_ids = []
        for i in range(RUNS):
            workflow = await api.runs.create_workflow(f"idle-{i}", chain(1))
            run_ids.append((await api.runs.create_run(workflow.id)).id)  # pending: no engine
        with counting_reads() as reads:
            watchers = [
                asyncio.create_task(drain(api.runs.watch_run(run_id)))
                for run_id in run_ids
                for _ in range(WATCHERS_PER_RUN)
            ]
            try:
                async with asyncio.timeout(60):  # each watcher read its first page
                    while reads["events"] < len(watchers):
                        await asyncio.sleep(POLL_S)
                await asyncio.sleep(2 * POLL_S)  # and went idle
                reads.clear()
                await asyncio.sleep(WINDOW_POLLS * POLL_S)
                window = dict(reads)
                assert not any(w.done() for w in watchers)  # all still watching
            finally:
                for w in watchers:
                    w.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
        # One read of all the runs per poll (the window holds at most WINDOW_POLLS + 1 polls,
        # however slow the machine): not two per watcher.
        assert window.get("events", 0) == 0, window
        assert 1 <= window.get("runs", 0) <= WINDOW_POLLS + 2, window


async def test_an_idle_watch_of_a_run_deleted_meanwhile_ends_not_found(
    runs: Clients, db: Direct
) -> None:
    workflow = await runs.runs.create_workflow("deleted", chain(1))
    run = await runs.runs.create_run(workflow.id)
    watcher = asyncio.create_task(drain(runs.runs.watch_run(run.id)))
    await asyncio.sleep(1.0)  # watching, and idle
    assert not watcher.done()
    async with db.sessions.begin() as session:
        await session.execute(delete(Run).where(Run.id == run.id))
    with pytest.raises(NotFound):
        async with asyncio.timeout(30):
            await watcher

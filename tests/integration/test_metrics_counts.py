"""The run counters say what happened to every run, once: a run cancelled (or a pending one
paused) by the runs API was never counted as finished, since the engine, which counts the
ends it writes, has its next write refused; an orphan swept by a Start (or a delete, a choice,
a move) rather than the sweeper's loop was not counted as swept, nor logged; and a resume's,
a re-run's or a retry's first event was stored but not counted as written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nyxflow import events as ev
from tests.integration.test_metrics import value
from tests.integration.test_runs_invariants import OWNER, as_engine
from tests.support.direct import Direct
from tests.support.inprocess import Clients, clients, runs_service
from tests.support.workflows import chain


@pytest.fixture
async def quiet_runs(database_url: str) -> AsyncIterator[Clients]:
    """runs whose background sweeper does not come round during the test: only the sweeps
    the API itself does (Start, delete, ...) can touch an orphan."""
    async with (
        runs_service(database_url, sweep_interval_s=3600) as settings,
        clients(settings.runs_listen) as api,
    ):
        yield api


async def test_a_cancelled_run_is_counted_as_finished_cancelled(runs: Clients) -> None:
    workflow = await runs.runs.create_workflow("cancel-me", chain(1))
    run = await runs.runs.create_run(workflow.id)
    before = value("nyxflow_runs_finished_total", status="cancelled")

    cancelled = await runs.runs.cancel_run(run.id)

    assert cancelled.status == ev.CANCELLED
    assert value("nyxflow_runs_finished_total", status="cancelled") == before + 1


async def test_a_running_cancelled_run_is_counted_as_finished_cancelled(runs: Clients) -> None:
    workflow = await runs.runs.create_workflow("cancel-running", chain(2))
    run = await runs.runs.create_run(workflow.id)
    claimed = await as_engine(runs, run.tenant_id).claim_run(run.id, OWNER, 30.0)
    assert claimed.won
    before = value("nyxflow_runs_finished_total", status="cancelled")

    await runs.runs.cancel_run(run.id)

    assert value("nyxflow_runs_finished_total", status="cancelled") == before + 1


async def test_a_pending_run_paused_is_counted_as_finished_paused(runs: Clients) -> None:
    workflow = await runs.runs.create_workflow("pause-pending", chain(1))
    run = await runs.runs.create_run(workflow.id)
    before = value("nyxflow_runs_finished_total", status="paused")

    paused = await runs.runs.pause_run(run.id)

    assert paused.status == ev.PAUSED
    assert value("nyxflow_runs_finished_total", status="paused") == before + 1


async def test_an_orphan_swept_by_start_is_counted_by_the_sweeper_metrics(
    quiet_runs: Clients,
) -> None:
    api = quiet_runs
    workflow = await api.runs.create_workflow("orphan-start", chain(2))
    run = await api.runs.create_run(workflow.id)
    claimed = await as_engine(api, run.tenant_id).claim_run(run.id, OWNER, 0.5)
    assert claimed.won
    await asyncio.sleep(1.5)  # the engine "died": its lease lapsed
    swept_before = value("nyxflow_sweeper_swept_total")
    failed_before = value("nyxflow_runs_finished_total", status="failed")

    await api.runs.create_run(workflow.id)  # Start sweeps the workflow's orphans first

    assert (await api.runs.get_run(run.id)).status == ev.FAILED
    assert value("nyxflow_sweeper_swept_total") == swept_before + 1
    assert value("nyxflow_runs_finished_total", status="failed") == failed_before + 1


async def test_every_persisted_event_is_counted_in_events_written(
    runs: Clients, db: Direct
) -> None:
    workflow = await runs.runs.create_workflow("rerun-events", chain(1))
    before = value("nyxflow_events_written_total")

    run = await runs.runs.rerun_workflow(workflow.id)

    persisted = await db.events(run.tenant_id, run.id)
    assert persisted, "a rerun records its event"
    assert value("nyxflow_events_written_total") == before + len(persisted)

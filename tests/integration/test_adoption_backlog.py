"""An engine that dies holding many resumable runs: a live replica adopts the whole backlog in
one interval. It took ten a round, then slept a whole interval: the last of 200 runs waited
pending, with no engine, twenty times as long as ADOPT_INTERVAL_S."""

from __future__ import annotations

import asyncio
import time

import pytest

from nyxflow import events as ev
from nyxflow.auth import internal_metadata
from nyxflow.client import RunsClient
from tests.support.inprocess import SECRET, Clients, engine_service
from tests.support.workflows import chain

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

REQUEUED = 40  # four of the adopter's batches
ADOPT_S = 2.0
SLACK_S = 1.5  # claiming and starting 40 runs on a loaded machine


async def test_a_backlog_of_requeued_runs_is_adopted_within_the_adopt_interval(
    runs: Clients, runs_addr: str
) -> None:
    ids = []
    for i in range(REQUEUED):
        wf = await runs.runs.create_workflow(f"r{i}", chain(1, tokens=1), on_orphan="resume")
        run = await runs.runs.create_run(wf.id)
        dead = RunsClient(runs.runs_channel, internal_metadata(SECRET, run.tenant_id))
        assert (await dead.claim_run(run.id, "dead-engine", 0.5)).won  # an engine that dies
        ids.append(run.id)
    async with engine_service(runs_addr, adopt_interval_s=ADOPT_S):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = [await runs.runs.get_run(i, brief=True) for i in ids]
            if all(r.status == ev.COMPLETED for r in done):
                break
            await asyncio.sleep(0.2)
        assert [r.status for r in done] == [ev.COMPLETED] * REQUEUED
    # Each run's wait, from the database: its run_requeued to the adopter's run_started.
    waits = []
    for run_id in ids:
        events = [e async for e in runs.runs.watch_run(run_id, 0)]
        requeued = next(e.created_at for e in events if e.type == ev.RUN_REQUEUED)
        started = next(
            e.created_at for e in events if e.type == ev.RUN_STARTED and e.created_at >= requeued
        )
        waits.append(started - requeued)
    late = sorted(round(w, 2) for w in waits if w > ADOPT_S + SLACK_S)
    assert not late, f"{len(late)} of {REQUEUED} requeued runs waited past the interval: {late}"

"""`on_orphan: resume`, through the real runs and engine services on both databases: an orphan
goes back to pending instead of failing, a draining engine hands its run over, and a live
engine adopts what is waiting; the old engine's token is fenced out all along."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.auth import engine_metadata
from nyxflow.client import RunsClient
from nyxflow.errors import InvalidArgument, NotFound, StaleToken, Unauthenticated
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.servicer import RunsServicer
from tests.integration.test_metrics import value
from tests.integration.test_runs_invariants import (
    MISSING,
    OWNER,
    as_engine,
    assert_stale,
    seqs_and_types,
    start_first_step,
    watch_all,
)
from tests.support.direct import Direct, direct
from tests.support.eventually import eventually
from tests.support.inprocess import SECRET, Clients, clients, engine_service, runs_service
from tests.support.workflows import chain


async def _async(number: float) -> float:
    return number


def adopter(api: Clients) -> RunsClient:
    """What an engine's adopter uses: the internal secret, for no tenant in particular."""
    return RunsClient(api.runs_channel, engine_metadata(SECRET))


async def resumable_run(api: Clients, steps: int = 2) -> pb.Run:
    workflow = await api.runs.create_workflow("resumable", chain(steps), on_orphan="resume")
    assert workflow.on_orphan == ev.ON_ORPHAN_RESUME
    return await api.runs.create_run(workflow.id)


async def claim(api: Clients, run: pb.Run, ttl_s: float) -> tuple[RunsClient, pb.Run, int]:
    engine = as_engine(api, run.tenant_id)
    won = await engine.claim_run(run.id, OWNER, ttl_s)
    assert won.won
    return engine, won.run, won.token


async def until_swept(api: Clients, run_id: str, what: str = "the orphan swept") -> pb.Run:
    """The run once it is no longer running (the sweeper's doing, here)."""
    return await eventually(
        lambda: api.runs.get_run(run_id),
        lambda r: r.status != ev.RUNNING,
        timeout_s=3.0,
        what=what,
    )


async def test_an_orphan_of_a_resumable_workflow_goes_back_to_pending(
    runs: Clients, db: Direct
) -> None:
    run = await resumable_run(runs)
    orphaned = value("nyxflow_runs_requeued_total", cause="orphaned")
    engine, claimed, token = await claim(runs, run, ttl_s=0.6)
    # The first step finished before the engine died; the second was running.
    first, second = claimed.steps
    done = runs_pb2.StepChange(status=ev.COMPLETED, output="kept")
    await engine.update_step(run.id, token, first.id, done, [])
    await engine.update_step(run.id, token, second.id, runs_pb2.StepChange(status=ev.RUNNING), [])

    requeued = await until_swept(runs, run.id)

    assert (requeued.status, requeued.requeues, requeued.error) == (ev.PENDING, 1, "")
    await eventually(  # counted by the sweeper once its transaction is in
        lambda: _async(value("nyxflow_runs_requeued_total", cause="orphaned")),
        lambda n: n == orphaned + 1,
        timeout_s=2.0,
        what="the requeue counted",
    )
    assert [(s.status, s.output) for s in requeued.steps] == [
        (ev.COMPLETED, "kept"),
        (ev.PENDING, ""),
    ]
    events = await db.events(run.tenant_id, run.id)
    assert seqs_and_types(events) == [(1, ev.RUN_STARTED), (2, ev.RUN_REQUEUED)]
    assert json.loads(events[-1].data_json) == {
        "status": ev.PENDING,
        "reason": ev.ORPHAN_ERROR,
        "requeues": 1,
    }
    # The dead engine's token is fenced out; the run waits for an adopter.
    await assert_stale(engine, claimed, token)
    waiting = await adopter(runs).list_requeued_runs()
    assert [(r.run_id, r.tenant_id) for r in waiting] == [(run.id, run.tenant_id)]

    # The next claim wins with a new token, on the same run and the same stream.
    _, again, new_token = await claim(runs, run, ttl_s=30)
    assert new_token == token + 1
    assert not await adopter(runs).list_requeued_runs()
    assert [s.status for s in again.steps] == [ev.COMPLETED, ev.PENDING]
    events = await db.events(run.tenant_id, run.id)
    assert seqs_and_types(events)[-1] == (3, ev.RUN_STARTED)


async def test_a_workflow_that_fails_its_orphans_is_not_requeued(runs: Clients, db: Direct) -> None:
    workflow = await runs.runs.create_workflow("plain", chain(1))
    assert workflow.on_orphan == ev.ON_ORPHAN_FAIL
    run = await runs.runs.create_run(workflow.id)
    await claim(runs, run, ttl_s=0.3)

    swept = await until_swept(runs, run.id)

    assert (swept.status, swept.error, swept.requeues) == (ev.FAILED, ev.ORPHAN_ERROR, 0)
    assert not await adopter(runs).list_requeued_runs()


async def test_an_orphan_comes_back_at_most_max_requeues_times_then_fails(
    runs: Clients, db: Direct
) -> None:
    run = await resumable_run(runs, steps=1)
    for attempt in range(1, ev.MAX_REQUEUES + 2):
        await claim(runs, run, ttl_s=0.2)
        status = await until_swept(runs, run.id, f"sweep {attempt}")
        if attempt <= ev.MAX_REQUEUES:
            assert (status.status, status.requeues) == (ev.PENDING, attempt)
    assert (status.status, status.error) == (ev.FAILED, ev.ORPHAN_ERROR)
    assert status.requeues == ev.MAX_REQUEUES
    types = [e.type for e in await db.events(run.tenant_id, run.id)]
    assert types.count(ev.RUN_REQUEUED) == ev.MAX_REQUEUES
    assert types.count(ev.RUN_STARTED) == ev.MAX_REQUEUES + 1
    assert types[-1] == ev.RUN_FAILED


async def test_release_hands_a_resumable_run_over_and_pauses_any_other(
    runs: Clients, db: Direct
) -> None:
    run = await resumable_run(runs)
    engine, claimed, token = await claim(runs, run, ttl_s=30)
    step = await start_first_step(engine, claimed, token)

    drained = value("nyxflow_runs_requeued_total", cause="drained")
    handed = await engine.release_run(run.id, token, "engine shut down")

    assert handed.status == ev.PENDING
    assert value("nyxflow_runs_requeued_total", cause="drained") == drained + 1
    assert [e.type for e in handed.written.events] == [ev.RUN_REQUEUED]
    stored = await runs.runs.get_run(run.id)
    assert (stored.status, stored.requeues) == (ev.PENDING, 1)
    assert {s.id: s.status for s in stored.steps}[step.id] == ev.PENDING
    await assert_stale(engine, claimed, token)
    with pytest.raises(StaleToken):
        await engine.release_run(run.id, token, "again")
    assert [r.run_id for r in await adopter(runs).list_requeued_runs()] == [run.id]

    plain = await runs.runs.create_workflow("plain", chain(1))
    other = await runs.runs.create_run(plain.id)
    engine2, claimed2, token2 = await claim(runs, other, ttl_s=30)
    await start_first_step(engine2, claimed2, token2)
    paused = await engine2.release_run(other.id, token2, "engine shut down")
    assert paused.status == ev.PAUSED
    stored = await runs.runs.get_run(other.id)
    assert (stored.status, stored.error) == (ev.PAUSED, "engine shut down")
    assert [s.status for s in stored.steps] == [ev.PENDING]
    assert [e.type for e in await watch_all(runs.runs, other.id)][-1] == ev.RUN_PAUSED


async def test_a_pending_run_never_claimed_is_not_listed_for_adoption(runs: Clients) -> None:
    """Only a run handed back waits for an adopter: one still waiting for its first start is
    the Execute caller's (the gateway starts it as a browser connects), and an adopter that
    took it would start what nobody asked to run yet."""
    fresh = await runs.runs.create_workflow("fresh", chain(1), on_orphan="resume")
    never_claimed = await runs.runs.create_run(fresh.id)  # the older of the two
    run = await resumable_run(runs)
    engine, _, token = await claim(runs, run, ttl_s=30)
    assert (await engine.release_run(run.id, token, "engine shut down")).status == ev.PENDING

    waiting = await adopter(runs).list_requeued_runs()

    assert (await runs.runs.get_run(never_claimed.id)).status == ev.PENDING
    assert [(r.run_id, r.tenant_id) for r in waiting] == [(run.id, run.tenant_id)]


async def test_requeue_calls_are_the_engines_alone(runs: Clients) -> None:
    run = await resumable_run(runs)
    with pytest.raises(Unauthenticated):
        await runs.runs.list_requeued_runs()
    with pytest.raises(Unauthenticated):
        await runs.runs.release_run(run.id, 1, "")
    engine, _, token = await claim(runs, run, ttl_s=30)
    with pytest.raises(NotFound):  # another tenant's engine credentials: as if it did not exist
        await as_engine(runs, MISSING).release_run(run.id, token, "")
    with pytest.raises(InvalidArgument) as big:
        await engine.release_run(run.id, 2**40, "")
    assert big.value.field == "token"
    with pytest.raises(InvalidArgument) as bad:
        await adopter(runs).list_requeued_runs(limit=5_000)
    assert bad.value.field == "limit"
    with pytest.raises(InvalidArgument) as policy:
        await runs.runs.create_workflow("odd", chain(1), on_orphan="sometimes")
    assert policy.value.field == "on_orphan"


async def test_a_live_engine_adopts_a_requeued_run_and_completes_it(
    runs_addr: str, runs: Clients, db: Direct
) -> None:
    run = await resumable_run(runs, steps=3)
    engine, claimed, token = await claim(runs, run, ttl_s=0.6)
    first = claimed.steps[0]
    await engine.update_step(
        run.id, token, first.id, runs_pb2.StepChange(status=ev.COMPLETED, output="before"), []
    )
    await eventually(
        lambda: runs.runs.get_run(run.id),
        lambda r: r.status == ev.PENDING,
        timeout_s=3.0,
        what="the orphan requeued",
    )

    async with engine_service(runs_addr, adopt_interval_s=0.1):
        done = await eventually(
            lambda: runs.runs.get_run(run.id),
            lambda r: r.status not in ev.ACTIVE_RUN_STATUSES,
            timeout_s=10.0,
            what="the adopted run finished",
        )

    assert done.status == ev.COMPLETED, done.error
    # What was done before the death is kept; only the rest ran, once each.
    assert done.steps[0].output == "before"
    assert all(s.status == ev.COMPLETED and s.output for s in done.steps)
    events = await db.events(run.tenant_id, run.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    started = [json.loads(e.data_json)["step_id"] for e in events if e.type == ev.STEP_STARTED]
    assert started == [s.id for s in done.steps[1:]]
    assert [e.type for e in events].count(ev.RUN_STARTED) == 2


async def test_a_run_asked_to_pause_is_never_handed_over(runs: Clients) -> None:
    """The pause asked for outlives the engine: a drain pauses the run, a sweep fails it (not
    requeued for another engine to go on with), resumable by hand either way."""
    drained = await resumable_run(runs)
    engine, claimed, token = await claim(runs, drained, ttl_s=30)
    await start_first_step(engine, claimed, token)
    await runs.runs.pause_run(drained.id)
    released = await engine.release_run(drained.id, token, "engine shut down")
    assert released.status == ev.PAUSED
    assert (await runs.runs.get_run(drained.id)).status == ev.PAUSED

    orphan = await resumable_run(runs)
    await claim(runs, orphan, ttl_s=0.5)
    await runs.runs.pause_run(orphan.id)
    swept = await until_swept(runs, orphan.id)
    assert (swept.status, swept.error, swept.requeues) == (ev.FAILED, ev.ORPHAN_ERROR, 0)
    assert not await adopter(runs).list_requeued_runs()


async def test_a_run_adopted_again_by_the_same_engine_is_handed_over_by_its_drain(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first execution stalled (heartbeats unanswered), the run was requeued and this same
    engine adopted it. When the stale execution ended it took the new one off the engine's
    list, so a drain neither handed the run over nor paused it: it stayed `running` until its
    lease ran out again."""
    original = RunsServicer.Heartbeat

    async def the_first_lease_is_never_renewed(
        self: RunsServicer, request: runs_pb2.HeartbeatRequest, context: Any
    ) -> runs_pb2.HeartbeatResponse:
        if request.token == 1:
            await asyncio.sleep(30)
        return await original(self, request, context)

    monkeypatch.setattr(RunsServicer, "Heartbeat", the_first_lease_is_never_renewed)
    stop = asyncio.Event()
    async with (
        runs_service(database_url) as runs_settings,
        engine_service(
            runs_settings.runs_listen,
            stop=stop,
            # A lease of 3 s and steps of 6 s: a second's stall of a loaded machine must not
            # sweep the live execution too, nor end the stale one's step before it is adopted.
            lease_ttl_s=3.0,
            heartbeat_s=0.3,
            adopt_interval_s=0.1,
            delta_flush_ms=100_000,  # the stale execution writes again only at its step's end
        ) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
        direct(database_url) as db,
    ):
        assert api.engine is not None
        workflow = await api.runs.create_workflow(
            "readopt", chain(3, tokens=40, token_delay_ms=150), on_orphan="resume"
        )
        run = await api.runs.create_run(workflow.id)
        first = api.engine.execute(run.id)
        assert (await anext(first)).type == ev.RUN_STARTED
        await eventually(
            lambda: db.events(run.tenant_id, run.id),
            lambda events: [e.type for e in events].count(ev.RUN_STARTED) == 2,
            what="adopted again by the same engine",
        )
        # The stale execution's step (6 s) ends, its write is refused, it stops: its stream
        # ends (waited for, not guessed: a loaded machine's stall must not reorder the two).
        async with asyncio.timeout(20):
            async for _ in first:
                pass
        assert (await api.runs.get_run(run.id)).status == ev.RUNNING
        stop.set()  # SIGTERM
        await first.aclose()
        requeued = await eventually(
            lambda: db.events(run.tenant_id, run.id),
            lambda events: [e.type for e in events].count(ev.RUN_REQUEUED) == 2,
            timeout_s=5,
            what="handed over by the drain",
        )
    reasons = [json.loads(e.data_json)["reason"] for e in requeued if e.type == ev.RUN_REQUEUED]
    assert reasons[-1] == "engine shut down", reasons


async def test_a_drain_during_a_step_failures_write_fails_the_run(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step failed for good (its retries spent); the drain came while its failure was being
    written. The run was handed over (or paused) instead of failed, and another engine ran the
    failed step once more, past the retries the workflow allows."""
    original = RunsServicer.RecordMany
    failure_written = asyncio.Event()

    async def a_slow_failure(
        self: RunsServicer, request: runs_pb2.RecordManyRequest, context: Any
    ) -> runs_pb2.RecordManyResponse:
        if ev.STEP_FAILED.encode() in request.SerializeToString():
            failure_written.set()
            await stop.wait()  # the drain lands meanwhile, whatever the machine's pace
            await asyncio.sleep(0.3)
        return await original(self, request, context)

    monkeypatch.setattr(RunsServicer, "RecordMany", a_slow_failure)
    stop = asyncio.Event()
    async with (
        runs_service(database_url) as runs_settings,
        engine_service(runs_settings.runs_listen, stop=stop) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
        direct(database_url) as db,
    ):
        assert api.engine is not None
        workflow = await api.runs.create_workflow(
            "fails", chain(2, fail="out of credit"), on_orphan="resume"
        )
        run = await api.runs.create_run(workflow.id)
        stream = api.engine.execute(run.id)
        assert (await anext(stream)).type == ev.RUN_STARTED
        await asyncio.wait_for(failure_written.wait(), timeout=10)
        stop.set()  # SIGTERM
        ended = await eventually(
            lambda: api.runs.get_run(run.id),
            lambda r: r.status not in (ev.RUNNING, ev.PENDING),
            timeout_s=5,
            what="the run's end",
        )
        await stream.aclose()
        types = [e.type for e in await db.events(run.tenant_id, run.id)]
    assert (ended.status, ended.steps[0].status) == (ev.FAILED, ev.FAILED), types
    assert "out of credit" in ended.error
    assert ev.RUN_REQUEUED not in types and ev.RUN_PAUSED not in types, types

"""The runs service's invariants, through its real gRPC API on both databases: start once, one
active run per workflow, fencing, gap-free seqs, the orphan sweeper, WatchRun, tenant walls,
validation, and the database as the truth. The engine's calls are made directly, with the
internal credentials the engine uses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select

from nyxflow import events as ev
from nyxflow.auth import INTERNAL, bearer_metadata, internal_metadata
from nyxflow.client import AdminClient, RunsClient
from nyxflow.constants import MAX_STEPS
from nyxflow.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NyxflowError,
    Unauthenticated,
    error_from_status,
)
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs.models import Run, Step
from tests.support.direct import Direct, direct
from tests.support.eventually import eventually
from tests.support.inprocess import ADMIN_KEY, SECRET, Clients, clients, runs_service
from tests.support.workflows import chain, complete, llm_step

OWNER = "engine-under-test"
TTL = 30.0
MISSING = "00000000-0000-0000-0000-000000000000"


# --- helpers ---------------------------------------------------------------------------------


def as_engine(api: Clients, tenant_id: str) -> RunsClient:
    """A client with the engine's identity: the internal secret plus the run's tenant."""
    return RunsClient(api.runs_channel, internal_metadata(SECRET, tenant_id))


def draft(type_: str, **data: Any) -> pb.EventDraft:
    return pb.EventDraft(type=type_, data_json=json.dumps(data))


async def new_run(api: Clients, steps: int = 2, name: str = "wf") -> pb.Run:
    workflow = await api.runs.create_workflow(name, chain(steps))
    return await api.runs.create_run(workflow.id)


async def claimed(
    api: Clients, ttl_s: float = TTL, steps: int = 2, name: str = "wf"
) -> tuple[RunsClient, pb.Run, int]:
    """A new run, claimed: the engine client, the run (with steps) and the fencing token."""
    run = await new_run(api, steps, name)
    engine = as_engine(api, run.tenant_id)
    claim = await engine.claim_run(run.id, OWNER, ttl_s)
    assert claim.won
    return engine, claim.run, claim.token


@asynccontextmanager
async def watching(
    client: RunsClient, run_id: str, after_seq: int = 0
) -> AsyncIterator[AsyncGenerator[pb.RunEvent, None]]:
    stream = client.watch_run(run_id, after_seq)
    try:
        yield stream
    finally:
        await stream.aclose()


async def next_event(
    stream: AsyncGenerator[pb.RunEvent, None], timeout_s: float = 10.0
) -> pb.RunEvent:
    async with asyncio.timeout(timeout_s):
        return await anext(stream)


async def watch_all(
    client: RunsClient, run_id: str, after_seq: int = 0, timeout_s: float = 5.0
) -> list[pb.RunEvent]:
    """Everything WatchRun sends; it must end by itself (after the terminal event)."""
    async with asyncio.timeout(timeout_s), watching(client, run_id, after_seq) as stream:
        return [event async for event in stream]


def seqs_and_types(events: list[pb.RunEvent]) -> list[tuple[int, str]]:
    return [(e.seq, e.type) for e in events]


def engine_writes(
    engine: RunsClient, run: pb.Run, token: int
) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every engine write, with `token`, by name."""
    step_id = run.steps[0].id
    return {
        "Heartbeat": lambda: engine.heartbeat(run.id, token, TTL),
        "AppendEvents": lambda: engine.append_events(
            run.id, token, [draft(ev.STEP_DELTA, text="x")]
        ),
        "AppendEvents (none)": lambda: engine.append_events(run.id, token, []),
        "UpdateStep": lambda: engine.update_step(
            run.id,
            token,
            step_id,
            runs_pb2.StepChange(status=ev.COMPLETED, output="late"),
            [draft(ev.STEP_COMPLETED, step_id=step_id)],
        ),
        "FinishRun": lambda: engine.finish_run(run.id, token, ev.FAILED, "late"),
        "RecordMany": lambda: record_alone(engine, run.id, token),
    }


async def record_alone(engine: RunsClient, run_id: str, token: int) -> runs_pb2.WriteResponse:
    """RecordMany with one batch, its per-batch refusal raised like a call's."""
    ops = [runs_pb2.WriteOp(event=draft(ev.STEP_DELTA, text="x"))]
    response = await engine.record_many(
        [runs_pb2.RecordRequest(run_id=run_id, token=token, ops=ops)]
    )
    (result,) = response.results
    if result.code:
        raise error_from_status(result.code, result.message, result.field)
    return result.written


async def outcome(call: Callable[[], Awaitable[object]]) -> str:
    """`ok`, or the error's class and message: compare many calls in one assert."""
    try:
        await call()
    except NyxflowError as error:
        return f"{type(error).__name__}: {error.message}"
    return "ok"


async def outcomes(calls: dict[str, Callable[[], Awaitable[object]]]) -> dict[str, str]:
    return {name: await outcome(call) for name, call in calls.items()}


async def start_first_step(engine: RunsClient, run: pb.Run, token: int) -> pb.Step:
    """The engine marks the run's first step running, with its step_started event."""
    step = run.steps[0]
    await engine.update_step(
        run.id,
        token,
        step.id,
        runs_pb2.StepChange(status=ev.RUNNING),
        [draft(ev.STEP_STARTED, step_id=step.id)],
    )
    return step


async def assert_stale(engine: RunsClient, run: pb.Run, token: int) -> None:
    """Every write with `token` is refused as stale (FAILED_PRECONDITION)."""
    got = await outcomes(engine_writes(engine, run, token))
    assert all(o.startswith("StaleToken: stale fencing token") for o in got.values()), got


# --- start once ------------------------------------------------------------------------------


async def test_a_hundred_simultaneous_claims_start_the_run_once(runs: Clients, db: Direct) -> None:
    run = await new_run(runs)
    engine = as_engine(runs, run.tenant_id)

    claims = await asyncio.gather(
        *(engine.claim_run(run.id, f"engine-{i}", TTL) for i in range(100))
    )

    winners = [i for i, claim in enumerate(claims) if claim.won]
    assert len(winners) == 1, winners
    winner = claims[winners[0]]
    assert winner.token > 0 and winner.run.status == ev.RUNNING
    assert seqs_and_types(list(winner.events)) == [(1, ev.RUN_STARTED)]
    assert [s.id for s in winner.run.steps] == [
        s.id for s in (await runs.runs.get_run(run.id)).steps
    ]
    for claim in claims:
        if not claim.won:
            assert claim.token == 0 and not claim.events and claim.run.id == run.id
    persisted = await db.events(run.tenant_id, run.id)
    assert seqs_and_types(persisted) == [(1, ev.RUN_STARTED)]
    assert json.loads(persisted[0].data_json) == {"owner": f"engine-{winners[0]}"}
    stored = await runs.runs.get_run(run.id)
    assert stored.status == ev.RUNNING and stored.last_seq == 1 and stored.started_at > 0


async def test_a_finished_run_is_never_claimed_again(runs: Clients, db: Direct) -> None:
    engine, run, token = await claimed(runs)
    await complete(engine, run, token)

    again = await engine.claim_run(run.id, "another-engine", TTL)

    assert not again.won and again.token == 0 and again.run.status == ev.COMPLETED
    assert seqs_and_types(await db.events(run.tenant_id, run.id)) == [
        (1, ev.RUN_STARTED),
        (2, ev.RUN_COMPLETED),
    ]


# --- one active run per workflow ---------------------------------------------------------------


async def test_one_active_run_per_workflow(runs: Clients) -> None:
    workflow = await runs.runs.create_workflow("single", chain(1))

    results = await asyncio.gather(
        *(runs.runs.create_run(workflow.id) for _ in range(50)), return_exceptions=True
    )

    created = [r for r in results if isinstance(r, pb.Run)]
    refused = [r for r in results if isinstance(r, FailedPrecondition)]
    assert len(created) == 1 and len(refused) == 49, [r for r in results if r not in refused]
    (run,) = created
    # each refusal names the run that won, so the caller can follow it
    assert {r.message for r in refused} == {
        f"workflow {workflow.id} has an active run {run.id} (pending)"
    }
    # still refused while it runs
    engine = as_engine(runs, run.tenant_id)
    await engine.claim_run(run.id, OWNER, TTL)
    with pytest.raises(FailedPrecondition, match=f"active run {run.id} \\(running\\)"):
        await runs.runs.create_run(workflow.id)
    await runs.runs.cancel_run(run.id)

    again = await runs.runs.create_run(workflow.id)

    assert again.id != run.id and again.status == ev.PENDING and again.last_seq == 0
    assert (await runs.runs.get_run(run.id)).status == ev.CANCELLED


# --- fencing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["next", "zero"])
async def test_a_wrong_token_is_refused_and_changes_nothing(
    runs: Clients, db: Direct, wrong: str
) -> None:
    engine, run, token = await claimed(runs)
    bad = token + 1 if wrong == "next" else 0
    before = await runs.runs.get_run(run.id)

    await assert_stale(engine, run, bad)

    assert await runs.runs.get_run(run.id) == before
    assert before.status == ev.RUNNING and before.last_seq == 1
    assert seqs_and_types(await db.events(run.tenant_id, run.id)) == [(1, ev.RUN_STARTED)]
    # the right token still writes, right after the claim's event
    written = await engine.append_events(run.id, token, [draft(ev.STEP_DELTA, t="ok")])
    assert [e.seq for e in written.events] == [2]


async def test_after_finish_the_old_token_is_refused(runs: Clients, db: Direct) -> None:
    engine, run, token = await claimed(runs, steps=1)
    step = run.steps[0]
    await engine.update_step(run.id, token, step.id, runs_pb2.StepChange(status=ev.RUNNING))
    await engine.update_step(
        run.id, token, step.id, runs_pb2.StepChange(status=ev.COMPLETED, output="done")
    )
    finished = await engine.finish_run(run.id, token, ev.COMPLETED)
    assert seqs_and_types(list(finished.events)) == [(2, ev.RUN_COMPLETED)]
    snapshot = await runs.runs.get_run(run.id)

    await assert_stale(engine, run, token)

    assert await runs.runs.get_run(run.id) == snapshot
    assert snapshot.status == ev.COMPLETED and snapshot.steps[0].output == "done"
    assert seqs_and_types(await db.events(run.tenant_id, run.id)) == [
        (1, ev.RUN_STARTED),
        (2, ev.RUN_COMPLETED),
    ]


# --- gap-free seqs -----------------------------------------------------------------------------


async def test_concurrent_appends_get_gap_free_seqs(runs: Clients) -> None:
    engine, run, token = await claimed(runs)

    responses = await asyncio.gather(
        *(
            engine.append_events(
                run.id, token, [draft(ev.STEP_DELTA, batch=b, i=i) for i in range(5)]
            )
            for b in range(20)
        )
    )
    batches = [list(response.events) for response in responses]

    for b, written in enumerate(batches):
        first = written[0].seq
        assert [e.seq for e in written] == list(range(first, first + 5)), b  # one block each
        assert [json.loads(e.data_json) for e in written] == [
            {"batch": b, "i": i} for i in range(5)
        ]
    assert sorted(e.seq for written in batches for e in written) == list(range(2, 102))
    await complete(engine, run, token)

    replay = await watch_all(runs.runs, run.id)

    assert [e.seq for e in replay] == list(range(1, 103))
    assert replay[0].type == ev.RUN_STARTED and replay[-1].type == ev.RUN_COMPLETED
    returned = {e.seq: (e.type, json.loads(e.data_json)) for w in batches for e in w}
    assert {e.seq: (e.type, json.loads(e.data_json)) for e in replay[1:101]} == returned
    assert (await runs.runs.get_run(run.id)).last_seq == 102


# --- the orphan sweeper ------------------------------------------------------------------------


async def test_an_expired_lease_is_swept_with_its_running_step(runs: Clients, db: Direct) -> None:
    engine, run, token = await claimed(runs, ttl_s=0.5)
    await start_first_step(engine, run, token)

    swept = await eventually(
        lambda: runs.runs.get_run(run.id),
        lambda r: r.status != ev.RUNNING,
        timeout_s=10.0,
        what="the orphaned run swept",
    )

    assert swept.status == ev.FAILED and swept.error == ev.ORPHAN_ERROR
    assert swept.finished_at >= swept.started_at > 0
    assert [s.status for s in swept.steps] == [ev.FAILED, ev.PENDING]
    assert swept.steps[0].error == ev.ORPHAN_ERROR and swept.steps[0].finished_at > 0
    events = await db.events(run.tenant_id, run.id)
    assert seqs_and_types(events) == [(1, ev.RUN_STARTED), (2, ev.STEP_STARTED), (3, ev.RUN_FAILED)]
    assert json.loads(events[-1].data_json) == {"status": ev.FAILED, "error": ev.ORPHAN_ERROR}
    # the engine wakes up: a zombie changes nothing
    await assert_stale(engine, run, token)
    assert await runs.runs.get_run(run.id) == swept
    assert len(await db.events(run.tenant_id, run.id)) == 3


async def test_heartbeats_keep_a_run_alive(runs: Clients) -> None:
    # The kept run's lease (3 s) outlives a stall of a loaded machine between two heartbeats;
    # the heartbeats go on past it, so without them the run would be swept.
    engine, kept, token = await claimed(runs, ttl_s=3.0, name="kept")
    _, dropped, _ = await claimed(runs, ttl_s=1.0, name="dropped")  # never heartbeats

    expiries: list[float] = []
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        expiries.append(await engine.heartbeat(kept.id, token, 3.0))

    assert (await runs.runs.get_run(kept.id)).status == ev.RUNNING
    assert expiries == sorted(expiries) and len(set(expiries)) == len(expiries)
    # the sweeper was at work all along: the run without heartbeats is gone (4 x its TTL)
    lost = await runs.runs.get_run(dropped.id)
    assert lost.status == ev.FAILED and lost.error == ev.ORPHAN_ERROR


async def test_two_runs_replicas_sweep_an_orphan_once(
    runs: Clients, db: Direct, database_url: str
) -> None:
    async with runs_service(database_url) as second, clients(second.runs_listen) as other:
        _, run, _ = await claimed(runs, ttl_s=0.3)

        swept = await eventually(
            lambda: other.runs.get_run(run.id),
            lambda r: r.status != ev.RUNNING,
            timeout_s=10.0,
            what="the orphaned run swept",
        )
        # more sweeps, all at once, find nothing left to sweep
        again = await asyncio.gather(*(db.store.sweep_orphans_all_tenants() for _ in range(10)))

    assert swept.status == ev.FAILED and swept.error == ev.ORPHAN_ERROR
    assert all(run.id not in s.failed + s.requeued for s in again)
    events = await db.events(run.tenant_id, run.id)
    assert seqs_and_types(events) == [(1, ev.RUN_STARTED), (2, ev.RUN_FAILED)]
    assert await runs.runs.get_run(run.id) == swept


async def test_concurrent_sweeps_fail_each_orphan_exactly_once(database_url: str) -> None:
    # Its own runs service, whose sweeper has done its first round and then waits an hour.
    async with (
        runs_service(database_url, sweep_interval_s=3600) as settings,
        clients(settings.runs_listen) as api,
        direct(database_url) as a,
        direct(database_url) as b,
        direct(database_url) as c,
    ):
        orphans = [(await claimed(api, ttl_s=0.2, name=f"w{i}"))[1] for i in range(5)]
        ids = [run.id for run in orphans]
        await eventually(lambda: a.expired_leases(ids), lambda n: n == len(ids), timeout_s=10.0)

        results = await asyncio.gather(
            *(store.store.sweep_orphans_all_tenants() for store in [a, b, c] * 7)
        )

        assert sorted(run_id for swept in results for run_id in swept.failed) == sorted(ids)
        assert not any(swept.requeued for swept in results)
        for run in orphans:
            stored = await api.runs.get_run(run.id)
            assert stored.status == ev.FAILED and stored.error == ev.ORPHAN_ERROR
            assert seqs_and_types(await a.events(run.tenant_id, run.id)) == [
                (1, ev.RUN_STARTED),
                (2, ev.RUN_FAILED),
            ]


async def test_create_run_sweeps_the_workflows_stale_run_first(database_url: str) -> None:
    async with (
        runs_service(database_url, sweep_interval_s=3600) as settings,
        clients(settings.runs_listen) as api,
        direct(database_url) as db,
    ):
        workflow = await api.runs.create_workflow("stale", chain(1))
        old = await api.runs.create_run(workflow.id)
        engine = as_engine(api, old.tenant_id)
        claim = await engine.claim_run(old.id, OWNER, 0.3)
        assert claim.won
        await eventually(lambda: db.expired_leases([old.id]), lambda n: n == 1, timeout_s=10.0)
        assert (await api.runs.get_run(old.id)).status == ev.RUNNING  # nobody swept it yet

        new = await api.runs.create_run(workflow.id)

        assert new.status == ev.PENDING and new.id != old.id
        stale = await api.runs.get_run(old.id)
        assert stale.status == ev.FAILED and stale.error == ev.ORPHAN_ERROR
        assert seqs_and_types(await db.events(old.tenant_id, old.id)) == [
            (1, ev.RUN_STARTED),
            (2, ev.RUN_FAILED),
        ]
        await assert_stale(engine, claim.run, claim.token)


@asynccontextmanager
async def unswept_with_team_b(
    database_url: str,
) -> AsyncIterator[tuple[Clients, Direct, AdminClient]]:
    """Runs whose sweeper does not come round in the test, a second tenant (team-b), the
    default tenant's clients, a direct view of the database and the admin client."""
    async with (
        runs_service(database_url, sweep_interval_s=3600) as settings,
        clients(settings.runs_listen) as api,
        direct(database_url) as db,
    ):
        admin = AdminClient(api.runs_channel, bearer_metadata(ADMIN_KEY))
        await admin.create_tenant("team-b", "Team B")
        yield api, db, admin


@pytest.mark.parametrize("operation", ["select_alternative", "delete_workflow", "move_project"])
async def test_other_operations_sweep_the_workflows_stale_run_first(
    database_url: str, operation: str
) -> None:
    """A dead engine's run refused them ("has an active run") until the sweeper came round,
    up to 2 x TTL later, where create, resume, re-run and retry swept it first."""
    async with unswept_with_team_b(database_url) as (api, db, admin):
        project = await api.runs.create_project("p")
        workflow = await api.runs.create_workflow("stale", chain(2), project_id=project.id)
        first = await api.runs.create_run(workflow.id)
        engine = as_engine(api, first.tenant_id)
        claim = await engine.claim_run(first.id, OWNER, 30)
        step, last = claim.run.steps
        alternatives = [pb.Alternative(output="one"), pb.Alternative(output="two")]
        change = runs_pb2.StepChange(status=ev.COMPLETED, output="one", alternatives=alternatives)
        await engine.update_step(first.id, claim.token, step.id, change)
        await complete(engine, (await api.runs.get_run(first.id)), claim.token)
        # The last step retried, claimed by an engine that dies: its lease lapses, nobody
        # sweeps it yet.
        old = await api.runs.retry_step(last.id)
        claim = await engine.claim_run(old.id, OWNER, 0.3)
        assert claim.won
        await eventually(lambda: db.expired_leases([old.id]), lambda n: n == 1, timeout_s=10.0)

        if operation == "select_alternative":
            assert (await api.runs.select_alternative(step.id, 1)).selected_index == 1
        elif operation == "delete_workflow":
            await api.runs.delete_workflow(workflow.id)
        else:
            await admin.move_project(project.id, "team-b")

        async with db.sessions() as session:  # unscoped: the run may be team-b's now
            stale = await session.get(Run, old.id)
        if operation == "delete_workflow":
            assert stale is None
        else:
            assert stale is not None and (stale.status, stale.error) == (
                ev.FAILED, ev.ORPHAN_ERROR
            )  # fmt: skip
        if operation == "select_alternative":
            await assert_stale(engine, claim.run, claim.token)


@pytest.mark.parametrize("operation", ["resume_workflow", "rerun_workflow"])
async def test_another_tenants_resume_or_rerun_sweeps_nothing(
    database_url: str, operation: str
) -> None:
    """NotFound came after the sweep of the workflow named: another tenant's id failed the
    owner's orphan early, an answer unlike a missing id's."""
    async with unswept_with_team_b(database_url) as (api, db, admin):
        other = api.as_key((await admin.create_api_key("team-b", "k")).secret)
        workflow = await api.runs.create_workflow("stale", chain(1))
        old = await api.runs.create_run(workflow.id)
        assert (await as_engine(api, old.tenant_id).claim_run(old.id, OWNER, 0.3)).won
        await eventually(lambda: db.expired_leases([old.id]), lambda n: n == 1, timeout_s=10.0)

        with pytest.raises(NotFound):
            await getattr(other, operation)(workflow.id)

        assert (await api.runs.get_run(old.id, brief=True)).status == ev.RUNNING


# --- WatchRun ----------------------------------------------------------------------------------


async def test_watch_replays_after_after_seq_then_the_live_tail_then_ends(runs: Clients) -> None:
    engine, run, token = await claimed(runs)
    await engine.append_events(run.id, token, [draft(ev.STEP_DELTA, n=n) for n in range(3)])

    async with watching(runs.runs, run.id, after_seq=2) as stream:
        replayed = [await next_event(stream) for _ in range(2)]
        assert [(e.seq, json.loads(e.data_json)["n"]) for e in replayed] == [(3, 1), (4, 2)]
        for n in range(3, 6):
            (written,) = (
                await engine.append_events(run.id, token, [draft(ev.STEP_DELTA, n=n)])
            ).events
            live = await next_event(stream)
            assert (live.seq, live.type, live.data_json) == (
                written.seq,
                written.type,
                written.data_json,
            )
        batch = (
            await engine.append_events(
                run.id, token, [draft(ev.STEP_DELTA, n=6), draft(ev.STEP_DELTA, n=7)]
            )
        ).events
        assert [(await next_event(stream)).seq for _ in batch] == [e.seq for e in batch]
        (terminal,) = await complete(engine, run, token)
        last = await next_event(stream)
        assert (last.seq, last.type) == (terminal.seq, ev.RUN_COMPLETED) == (10, ev.RUN_COMPLETED)
        with pytest.raises(StopAsyncIteration):
            await next_event(stream)


async def test_watch_tails_live_through_the_bus_not_the_poll(database_url: str) -> None:
    async with (
        runs_service(database_url, watch_poll_s=30) as settings,
        clients(settings.runs_listen) as api,
    ):
        engine, run, token = await claimed(api)
        async with watching(api.runs, run.id) as stream:
            assert (await next_event(stream)).type == ev.RUN_STARTED
            for n in range(5):
                written = (
                    await engine.append_events(run.id, token, [draft(ev.STEP_DELTA, n=n)])
                ).events[0]
                # the poll would take 30 s: only the bus delivers this fast
                assert (await next_event(stream, timeout_s=10.0)).seq == written.seq
            await complete(engine, run, token)
            assert (await next_event(stream, timeout_s=10.0)).type == ev.RUN_COMPLETED


async def test_watch_of_a_finished_run_replays_and_ends(runs: Clients) -> None:
    engine, run, token = await claimed(runs)
    await engine.append_events(run.id, token, [draft(ev.STEP_DELTA, n=1)])
    await engine.finish_run(run.id, token, ev.FAILED, "boom")

    assert seqs_and_types(await watch_all(runs.runs, run.id)) == [
        (1, ev.RUN_STARTED),
        (2, ev.STEP_DELTA),
        (3, ev.RUN_FAILED),
    ]
    assert seqs_and_types(await watch_all(runs.runs, run.id, after_seq=2)) == [(3, ev.RUN_FAILED)]


async def test_watch_after_the_terminal_event_ends_at_once(runs: Clients) -> None:
    """A client that already has the terminal event reconnects with it as Last-Event-ID (a
    browser's EventSource does, when the stream closes): nothing more will ever come, so the
    stream must end instead of tailing a finished run forever."""
    engine, run, token = await claimed(runs)
    (terminal,) = await complete(engine, run, token)

    # one that tails for ever times out; 10 s outlasts a loaded machine's stall
    assert await watch_all(runs.runs, run.id, after_seq=terminal.seq, timeout_s=10.0) == []


async def test_a_watch_from_past_the_last_event_ends_when_the_run_does(runs: Clients) -> None:
    """Asked from beyond the run's last seq while it ran, the watch skipped every event, the
    terminal one included, and then polled the finished run for ever."""
    engine, run, token = await claimed(runs)
    watch = asyncio.ensure_future(watch_all(runs.runs, run.id, after_seq=1000, timeout_s=10.0))
    await asyncio.sleep(0.3)  # in its live tail

    await complete(engine, run, token)

    assert await watch == []


async def test_watch_errors(runs: Clients) -> None:
    with pytest.raises(NotFound):
        await watch_all(runs.runs, MISSING)
    run = await new_run(runs)
    with pytest.raises(InvalidArgument) as negative:
        await watch_all(runs.runs, run.id, after_seq=-1)
    assert negative.value.field == "after_seq"
    with pytest.raises(InvalidArgument) as empty:
        await watch_all(runs.runs, "")
    assert empty.value.field == "run_id"


# --- tenants are walls -------------------------------------------------------------------------


async def test_another_tenant_gets_not_found_for_everything(runs: Clients, db: Direct) -> None:
    workflow = await runs.runs.create_workflow("a-only", chain(2))
    run = await runs.runs.create_run(workflow.id)
    b = await db.add_tenant("tenant-b")
    as_b = runs.as_key(b.api_key)
    b_engine = as_engine(runs, b.id)

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "GetWorkflow": lambda: as_b.get_workflow(workflow.id),
        "GetRun": lambda: as_b.get_run(run.id),
        "CreateRun": lambda: as_b.create_run(workflow.id),
        "WatchRun": lambda: watch_all(as_b, run.id),
        "ClaimRun (internal)": lambda: b_engine.claim_run(run.id, OWNER, TTL),
    }
    got = await outcomes(calls)
    assert all(o.startswith("NotFound: ") for o in got.values()), got
    with pytest.raises(NotFound):
        await as_b.claim_run(run.id, OWNER, TTL)

    # exactly like a missing id: same status, same message but for the id
    with pytest.raises(NotFound) as theirs:
        await as_b.get_run(run.id)
    with pytest.raises(NotFound) as missing:
        await as_b.get_run(MISSING)
    assert str(theirs.value).replace(run.id, "<id>") == str(missing.value).replace(MISSING, "<id>")

    b_workflow = await as_b.create_workflow("b-only", chain(1))
    assert [w.id for w in await as_b.list_workflows()] == [b_workflow.id]
    assert [w.id for w in await runs.runs.list_workflows()] == [workflow.id]

    # A's run is untouched, and B cannot write to it even with A's current token
    stored = await runs.runs.get_run(run.id)
    assert stored.status == ev.PENDING and stored.last_seq == 0
    claim = await as_engine(runs, run.tenant_id).claim_run(run.id, OWNER, TTL)
    assert claim.won
    got = await outcomes(engine_writes(b_engine, claim.run, claim.token))
    assert all(o.startswith("NotFound: ") for o in got.values()), got
    assert seqs_and_types(await db.events(run.tenant_id, run.id)) == [(1, ev.RUN_STARTED)]
    assert await db.events(b.id, run.id) == []


def reads_and_claims(client: RunsClient, run_id: str) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "ListWorkflows": client.list_workflows,
        "GetRun": lambda: client.get_run(run_id),
        "ClaimRun": lambda: client.claim_run(run_id, OWNER, TTL),
        "WatchRun": lambda: watch_all(client, run_id),
    }


async def test_credentials_are_required(runs: Clients) -> None:
    run = await new_run(runs)
    nobody = RunsClient(runs.runs_channel, ())
    wrong_key = runs.as_key("not-a-key")
    wrong_secret = RunsClient(runs.runs_channel, internal_metadata("wrong-secret", run.tenant_id))
    no_tenant = RunsClient(runs.runs_channel, ((INTERNAL, SECRET),))

    for client in (nobody, wrong_key, wrong_secret, no_tenant):
        got = await outcomes(reads_and_claims(client, run.id))
        assert all(o.startswith("Unauthenticated: ") for o in got.values()), got

    stored = await runs.runs.get_run(run.id)
    assert stored.status == ev.PENDING and stored.last_seq == 0


# --- validation --------------------------------------------------------------------------------


def spec(name: str, kind: str = "llm", **fields: Any) -> pb.StepSpec:
    return pb.StepSpec(name=name, kind=kind, **fields)


@pytest.mark.parametrize(
    ("name", "steps", "field"),
    [
        ("", [llm_step("a")], "name"),
        ("   ", [llm_step("a")], "name"),
        ("x" * 201, [llm_step("a")], "name"),
        ("wf", [], "steps"),
        ("wf", [spec("a", kind="nope")], "steps[0].kind"),
        ("wf", [llm_step("a"), spec("b", kind="")], "steps[1].kind"),
        ("wf", [spec("a", params_json="[1, 2]")], "steps[0].params"),
        ("wf", [spec("a", params_json='"text"')], "steps[0].params"),
        ("wf", [spec("a", params_json="{not json")], "steps[0].params"),
        ("wf", [llm_step("a"), llm_step("b"), llm_step("a")], "steps[2].name"),
        ("wf", [spec(" ")], "steps[0].name"),
        ("wf", [spec("a", max_tokens=-1)], "steps[0].max_tokens"),
        ("wf", [spec("a", prompt="{{ steps.a.output }}")], "steps[0].prompt"),
        ("wf", [llm_step("a"), spec("b", prompt="{{ steps.c.output }}")], "steps[1].prompt"),
        ("wf", [spec("a", prompt="{{ item }}")], "steps[0].prompt"),
        ("wf", [spec("a", prompt="{{ whatever }}")], "steps[0].prompt"),
        ("wf", [spec("a", persona="nobody-by-this-name")], "steps[0].persona"),
    ],
)
async def test_create_workflow_names_the_invalid_field(
    runs: Clients, name: str, steps: list[pb.StepSpec], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await runs.runs.create_workflow(name, steps)
    assert caught.value.field == field
    assert caught.value.message and not caught.value.message.startswith(field)
    assert await runs.runs.list_workflows() == []


async def test_engine_calls_name_the_invalid_field(runs: Clients) -> None:
    engine, run, token = await claimed(runs)
    step_id = run.steps[0].id
    bad: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("lease_ttl_s", lambda: engine.claim_run(run.id, OWNER, 0)),
        ("owner", lambda: engine.claim_run(run.id, "", TTL)),
        ("run_id", lambda: engine.claim_run("", OWNER, TTL)),
        ("lease_ttl_s", lambda: engine.heartbeat(run.id, token, -1)),
        ("status", lambda: engine.finish_run(run.id, token, ev.RUNNING)),
        (
            "change.status",
            lambda: engine.update_step(run.id, token, step_id, runs_pb2.StepChange(status="done")),
        ),
        (
            "events[1].data_json",
            lambda: engine.append_events(
                run.id,
                token,
                [draft(ev.STEP_DELTA), pb.EventDraft(type=ev.STEP_DELTA, data_json="[]")],
            ),
        ),
    ]
    for field, call in bad:
        with pytest.raises(InvalidArgument) as caught:
            await call()
        assert caught.value.field == field

    stored = await runs.runs.get_run(run.id)
    assert stored.status == ev.RUNNING and stored.last_seq == 1
    assert [s.status for s in stored.steps] == [ev.PENDING, ev.PENDING]


async def test_generated_steps_never_take_a_workflow_past_its_step_limit(runs: Clients) -> None:
    """Generation counted only the steps it added: 400 written and 400 generated made a
    workflow of 800 steps, which no edit could have made."""
    before = MAX_STEPS - 100
    engine, run, token = await claimed(runs, steps=before)
    after = run.steps[0].id

    def made(count: int) -> list[pb.StepSpec]:
        return [
            pb.StepSpec(name=f"gen {i}", kind="implementation_prompt", prompt="p")
            for i in range(count)
        ]

    with pytest.raises(InvalidArgument) as refused:
        await engine.generate_steps(run.id, token, after, made(101))
    assert refused.value.field == "steps" and f"at most {MAX_STEPS} steps" in refused.value.message
    assert len((await runs.runs.get_run(run.id)).steps) == before

    await engine.generate_steps(run.id, token, after, made(100))
    assert len((await runs.runs.get_run(run.id)).steps) == MAX_STEPS


BAD_DRAFTS = {
    "empty type": [pb.EventDraft(type="", data_json="{}")],
    "type over 40 characters": [draft("x" * 41)],
    "terminal type": [draft(ev.RUN_COMPLETED, status=ev.COMPLETED)],
}


@pytest.mark.parametrize("case", list(BAD_DRAFTS))
async def test_event_drafts_are_validated(runs: Clients, db: Direct, case: str) -> None:
    """An event's type is required, fits its column (40 characters) on every backend, and is
    never a terminal one: only FinishRun and the sweeper end a run's stream, together with its
    status. Otherwise a stray `run_completed` ends every watcher of a run that goes on."""
    engine, run, token = await claimed(runs)
    drafts, step_id = BAD_DRAFTS[case], run.steps[0].id
    change = runs_pb2.StepChange(status=ev.RUNNING)

    got = await outcomes(
        {
            "AppendEvents": lambda: engine.append_events(run.id, token, drafts),
            "UpdateStep": lambda: engine.update_step(run.id, token, step_id, change, drafts),
            "FinishRun": lambda: engine.finish_run(run.id, token, ev.FAILED, "x", drafts),
        }
    )

    assert all(o.startswith("InvalidArgument: ") for o in got.values()), got
    stored = await runs.runs.get_run(run.id)
    assert stored.status == ev.RUNNING and stored.last_seq == 1
    assert seqs_and_types(await db.events(run.tenant_id, run.id)) == [(1, ev.RUN_STARTED)]


# --- the database is the truth -----------------------------------------------------------------


async def start_two_steps(engine: RunsClient, run: pb.Run, token: int) -> None:
    """The first step completed, the second one running."""
    first, second = run.steps[0].id, run.steps[1].id
    await engine.update_step(run.id, token, first, runs_pb2.StepChange(status=ev.RUNNING))
    await engine.update_step(
        run.id, token, first, runs_pb2.StepChange(status=ev.COMPLETED, output="first output")
    )
    await engine.update_step(run.id, token, second, runs_pb2.StepChange(status=ev.RUNNING))


async def test_finish_failed_fails_the_running_step(runs: Clients, db: Direct) -> None:
    engine, run, token = await claimed(runs, steps=3)
    await start_two_steps(engine, run, token)

    (terminal,) = (await engine.finish_run(run.id, token, ev.FAILED, "provider exploded")).events

    stored = await runs.runs.get_run(run.id)
    assert stored.status == ev.FAILED and stored.error == "provider exploded"
    assert stored.finished_at > 0
    assert [s.status for s in stored.steps] == [ev.COMPLETED, ev.FAILED, ev.PENDING]
    assert stored.steps[0].output == "first output" and stored.steps[0].error == ""
    assert stored.steps[1].error == "provider exploded" and stored.steps[1].finished_at > 0
    assert stored.steps[2].error == ""
    assert terminal.type == ev.RUN_FAILED
    assert json.loads(terminal.data_json) == {"status": ev.FAILED, "error": "provider exploded"}
    assert (await db.events(run.tenant_id, run.id))[-1] == terminal


async def test_finish_paused_puts_the_running_step_back_to_pending(runs: Clients) -> None:
    engine, run, token = await claimed(runs, steps=3)
    await start_two_steps(engine, run, token)

    (terminal,) = (await engine.finish_run(run.id, token, ev.PAUSED, "engine shut down")).events

    stored = await runs.runs.get_run(run.id)
    assert stored.status == ev.PAUSED and stored.error == "engine shut down"
    assert terminal.type == ev.RUN_PAUSED
    assert [s.status for s in stored.steps] == [ev.COMPLETED, ev.PENDING, ev.PENDING]
    assert stored.steps[0].output == "first output"
    assert stored.steps[1].started_at == 0 and stored.steps[1].error == ""
    # a paused run is no longer active: the workflow may run again, from its steps' state
    resumed = await runs.runs.create_run(run.workflow_id)
    assert resumed.status == ev.PENDING
    assert [s.status for s in (await runs.runs.get_run(resumed.id)).steps] == [
        ev.COMPLETED,
        ev.PENDING,
        ev.PENDING,
    ]


async def test_a_tenant_key_claims_but_never_writes_as_the_engine(runs: Clients) -> None:
    run = await new_run(runs)
    claim = await runs.runs.claim_run(run.id, OWNER, TTL)
    assert claim.won
    drafts = [pb.EventDraft(type="step_delta", data_json="{}")]
    with pytest.raises(Unauthenticated, match="internal credentials"):
        await runs.runs.append_events(run.id, claim.token, drafts)
    with pytest.raises(Unauthenticated, match="internal credentials"):
        await runs.runs.heartbeat(run.id, claim.token, TTL)
    with pytest.raises(Unauthenticated, match="internal credentials"):
        await runs.runs.finish_run(run.id, claim.token, "completed")
    assert (await runs.runs.get_run(run.id)).last_seq == 1


async def test_a_retried_batch_is_answered_not_applied_twice(api: Clients) -> None:
    """The engine retries a Record whose reply was lost: the same events, stored once."""
    engine, run, token = await claimed(api)
    step = run.steps[0]
    ops = [
        runs_pb2.WriteOp(
            step=runs_pb2.StepWrite(
                step_id=step.id, change=runs_pb2.StepChange(status=ev.COMPLETED, output="x")
            )
        ),
        runs_pb2.WriteOp(event=draft(ev.STEP_COMPLETED, step_id=step.id)),
        runs_pb2.WriteOp(event=draft(ev.STEP_DELTA, step_id=step.id, text="x")),
    ]

    first = await engine.record(run.id, token, ops, batch_id="batch-1")
    again = await engine.record(run.id, token, ops, batch_id="batch-1")

    assert [e.seq for e in again.events] == [e.seq for e in first.events] == [2, 3]
    stored = await api.runs.get_run(run.id)
    assert stored.last_seq == 3
    later = await engine.record(
        run.id, token, [runs_pb2.WriteOp(event=draft(ev.STEP_DELTA, step_id=step.id, text="y"))],
        batch_id="batch-2",
    )  # fmt: skip
    assert [e.seq for e in later.events] == [4]
    # Another lease may not replay this one's batch.
    with pytest.raises(FailedPrecondition):
        await engine.record(run.id, token + 1, ops, batch_id="batch-2")


async def test_a_first_attempt_arriving_after_later_batches_is_not_applied(
    runs: Clients, db: Direct
) -> None:
    """Batch 1 starts a step, batch 2 completes it. Batch 1's first attempt, delayed in runs
    while its retry and batch 2 were applied, then arrives: it is answered as applied and
    writes nothing (it restarted the completed step and stored its events twice). A new claim
    numbers its batches from 1 again."""
    workflow = await runs.runs.create_workflow("late", chain(2), on_orphan="resume")
    pending = await runs.runs.create_run(workflow.id)
    engine = as_engine(runs, pending.tenant_id)
    claim = await engine.claim_run(pending.id, OWNER, TTL)
    run, token = claim.run, claim.token
    step = run.steps[0]

    def batch(seq: int, change: runs_pb2.StepChange, type_: str) -> runs_pb2.RecordRequest:
        ops = [
            runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step.id, change=change)),
            runs_pb2.WriteOp(event=draft(type_, step_id=step.id)),
        ]
        return runs_pb2.RecordRequest(
            run_id=run.id, token=token, ops=ops, batch_id=f"batch-{seq}", batch_seq=seq
        )

    start = batch(1, runs_pb2.StepChange(status=ev.RUNNING), ev.STEP_STARTED)
    end = batch(2, runs_pb2.StepChange(status=ev.COMPLETED, output="x"), ev.STEP_COMPLETED)
    answers = [await engine.record_many([b]) for b in (start, start, end, start, end)]

    assert [r.code for a in answers for r in a.results] == [0] * 5
    seqs = [[e.seq for e in a.results[0].written.events] for a in answers]
    # The retry and batch 2's retry get their answers again; the late attempt, none.
    assert seqs == [[2], [2], [3], [], [3]]
    events = await db.events(run.tenant_id, run.id)
    assert seqs_and_types(events) == [
        (1, ev.RUN_STARTED), (2, ev.STEP_STARTED), (3, ev.STEP_COMPLETED)
    ]  # fmt: skip
    stored = await runs.runs.get_run(run.id)
    assert (stored.last_seq, stored.steps[0].status) == (3, ev.COMPLETED)

    # Both arriving in one group (the first goes first, alone): the same.
    both = await engine.record_many([start, end])
    assert [[e.seq for e in r.written.events] for r in both.results] == [[], [3]]
    assert (await runs.runs.get_run(run.id)).last_seq == 3

    # The run handed over and claimed again: the new token's batches count from 1.
    handed = await engine.release_run(run.id, token, "engine shut down")
    assert handed.status == ev.PENDING
    reclaim = await engine.claim_run(run.id, OWNER, TTL)
    assert reclaim.won and reclaim.token > token
    first = runs_pb2.RecordRequest(
        run_id=run.id, token=reclaim.token, ops=[runs_pb2.WriteOp(event=draft(ev.STEP_DELTA))],
        batch_id="batch-1", batch_seq=1,
    )  # fmt: skip
    answer = await engine.record_many([first])
    assert [e.type for e in answer.results[0].written.events] == [ev.STEP_DELTA]


@pytest.mark.parametrize("op", ["start", "end", "item"])
async def test_a_batch_naming_another_runs_step_is_refused_whole(api: Clients, op: str) -> None:
    """Every write of a batch lands or none does: a step outside the run's workflow refuses
    the batch, its events and its other step changes included."""
    engine, run, token = await claimed(api, name="mine")
    _, other, _ = await claimed(api, name="theirs")
    foreign = other.steps[0].id
    write = {
        "start": runs_pb2.WriteOp(
            step=runs_pb2.StepWrite(step_id=foreign, change=runs_pb2.StepChange(status=ev.RUNNING))
        ),
        "end": runs_pb2.WriteOp(
            step=runs_pb2.StepWrite(
                step_id=foreign, change=runs_pb2.StepChange(status=ev.COMPLETED, output="x")
            )
        ),
        "item": runs_pb2.WriteOp(
            item=runs_pb2.ItemWrite(step_id=foreign, item=pb.StepItem(index=0, output="x"))
        ),
    }[op]
    own_start = runs_pb2.WriteOp(
        step=runs_pb2.StepWrite(
            step_id=run.steps[0].id, change=runs_pb2.StepChange(status=ev.RUNNING)
        )
    )
    ops = [own_start, runs_pb2.WriteOp(event=draft(ev.STEP_STARTED)), write]

    with pytest.raises(NotFound, match=foreign):
        await engine.record(run.id, token, ops, batch_id="b-1")

    stored = await api.runs.get_run(run.id)
    assert stored.last_seq == 1 and stored.steps[0].status == ev.PENDING
    assert (await api.runs.get_run(other.id)).steps[0].status == ev.PENDING
    assert [s.items for s in (await api.runs.get_run(other.id)).steps] == [[], []]
    # The refused batch id is not taken for applied: a corrected batch goes through.
    fixed = await engine.record(run.id, token, ops[:2], batch_id="b-1")
    assert [e.seq for e in fixed.events] == [2]


async def test_record_many_answers_each_batch_alone(api: Clients) -> None:
    """The engine's group commit: good batches land, each bad one is refused on its own with
    its reason (stale token, foreign step, invalid op, `completed` with a step not, a NUL in
    an output: on PostgreSQL it failed the group's statement, INTERNAL for every run), and no
    run sees another's events."""
    runs = [await claimed(api, name=f"group-{i}") for i in range(7)]
    engine = runs[0][0]

    def start(run: pb.Run, step_id: str = "") -> list[runs_pb2.WriteOp]:
        step = step_id or run.steps[0].id
        change = runs_pb2.StepChange(status=ev.RUNNING)
        return [
            runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step, change=change)),
            runs_pb2.WriteOp(event=draft(ev.STEP_STARTED, step_id=step)),
        ]

    (_, good, good_token), (_, stale, stale_token), (_, foreign, f_token) = runs[:3]
    (_, bad, bad_token), (_, done, done_token), (_, early, early_token) = runs[3:6]
    _, nul, nul_token = runs[6]
    nul_output = runs_pb2.StepChange(status=ev.COMPLETED, output="a\x00b")
    results_of = [
        runs_pb2.WriteOp(
            step=runs_pb2.StepWrite(
                step_id=s.id, change=runs_pb2.StepChange(status=ev.COMPLETED, output="ok")
            )
        )
        for s in done.steps
    ]
    batches = [
        runs_pb2.RecordRequest(run_id=good.id, token=good_token, ops=start(good)),
        runs_pb2.RecordRequest(run_id=stale.id, token=stale_token + 7, ops=start(stale)),
        runs_pb2.RecordRequest(
            run_id=foreign.id, token=f_token, ops=start(foreign, good.steps[1].id)
        ),
        runs_pb2.RecordRequest(
            run_id=bad.id, token=bad_token, ops=[runs_pb2.WriteOp(event=pb.EventDraft(type=""))]
        ),
        runs_pb2.RecordRequest(
            run_id=done.id, token=done_token, ops=results_of, finish_status=ev.COMPLETED
        ),
        # its second step never ran: completed, the run could never be resumed to run it
        runs_pb2.RecordRequest(
            run_id=early.id, token=early_token, ops=start(early), finish_status=ev.COMPLETED
        ),
        runs_pb2.RecordRequest(
            run_id=nul.id,
            token=nul_token,
            ops=[
                runs_pb2.WriteOp(
                    step=runs_pb2.StepWrite(step_id=nul.steps[0].id, change=nul_output)
                )
            ],
        ),
    ]

    results = (await engine.record_many(batches)).results

    assert [r.code for r in results] == [0, 9, 5, 3, 0, 9, 3]  # OK, FAILED_PRECONDITION, …
    assert results[6].field == "batches[6].ops[0].step.change.output"
    assert results[1].message.startswith("stale fencing token")
    assert good.steps[1].id in results[2].message
    assert results[3].field == "batches[3].ops[0].event.type"
    assert results[5].message.endswith("steps not completed: 's0' (running), 's1' (pending)")
    assert [e.seq for e in results[0].written.events] == [2]
    assert [e.type for e in results[4].written.events] == [ev.RUN_COMPLETED]
    after = {r.id: await api.runs.get_run(r.id) for _, r, _ in runs}
    assert after[good.id].steps[0].status == ev.RUNNING and after[good.id].last_seq == 2
    assert after[good.id].steps[1].status == ev.PENDING  # the foreign batch's target
    for untouched in (stale, foreign, bad, early, nul):
        assert (
            after[untouched.id].last_seq == 1 and after[untouched.id].steps[0].status == ev.PENDING
        )
        assert after[untouched.id].status == ev.RUNNING
    assert after[done.id].status == ev.COMPLETED
    assert [(s.status, s.output) for s in after[done.id].steps] == [(ev.COMPLETED, "ok")] * 2


def step_write(step_id: str, status: str, output: str = "") -> runs_pb2.WriteOp:
    change = runs_pb2.StepChange(status=status, output=output)
    return runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step_id, change=change))


async def test_record_many_applies_one_runs_batches_in_order(runs: Clients, db: Direct) -> None:
    """Two batches of one run in one RecordMany: the first ends the run with a step still
    running (the general path's case), the second only appends. In order, the second comes
    after the run's end and is refused, and the run's end is its last event."""
    engine, run, token = await claimed(runs)
    step = run.steps[0].id
    batches = [
        runs_pb2.RecordRequest(
            run_id=run.id, token=token, ops=[step_write(step, ev.RUNNING)],
            finish_status=ev.FAILED, finish_error="boom", batch_id="first",
        ),
        runs_pb2.RecordRequest(
            run_id=run.id, token=token, ops=[runs_pb2.WriteOp(event=draft(ev.STEP_DELTA))],
            batch_id="second",
        ),
    ]  # fmt: skip

    results = (await engine.record_many(batches)).results

    assert [r.code for r in results] == [0, 9]  # OK, FAILED_PRECONDITION
    events = await db.events(run.tenant_id, run.id)
    assert [e.type for e in events] == [ev.RUN_STARTED, ev.RUN_FAILED]
    stored = await runs.runs.get_run(run.id)
    assert (stored.status, stored.steps[0].status) == (ev.FAILED, ev.FAILED)


async def test_a_run_completed_with_a_step_the_batch_fails_is_refused(runs: Clients) -> None:
    """`completed` only when each step is, as the batch leaves it: one that fails a step
    completed before, and ends the run `completed`, is refused whole."""
    engine, run, token = await claimed(runs)
    first, second = (s.id for s in run.steps)
    done = [step_write(first, ev.COMPLETED, "a"), step_write(second, ev.COMPLETED, "b")]
    await engine.record(run.id, token, done, batch_id="done")
    for status in (ev.FAILED, ev.PENDING, ev.CANCELLED):
        batch = runs_pb2.RecordRequest(
            run_id=run.id, token=token, ops=[step_write(second, status)],
            finish_status=ev.COMPLETED, batch_id=f"undo-{status}",
        )  # fmt: skip

        (result,) = (await engine.record_many([batch])).results

        assert result.code == 9, status  # FAILED_PRECONDITION
        assert result.message.endswith(f"steps not completed: 's1' ({status})")
        stored = await runs.runs.get_run(run.id)
        assert stored.status == ev.RUNNING and stored.last_seq == 1
        assert [s.status for s in stored.steps] == [ev.COMPLETED, ev.COMPLETED]


def item_write(step_id: str, output: str, input_hash: str) -> runs_pb2.WriteOp:
    """Item 0 of a fan-out step, made from `input_hash`."""
    written = pb.StepItem(index=0, heading="h", output=output, input_hash=input_hash)
    return runs_pb2.WriteOp(item=runs_pb2.ItemWrite(step_id=step_id, item=written))


async def test_an_item_written_twice_in_a_batch_keeps_what_order_says(runs: Clients) -> None:
    """Item writes apply in order: a second from another input replaces the first, one from
    the same input keeps it, as with separate batches."""
    engine, run, token = await claimed(runs)
    first, second = (s.id for s in run.steps)
    ops = [
        item_write(first, "from the old input", "a" * 64),
        item_write(first, "from the new input", "b" * 64),
        item_write(second, "the first of one input", "c" * 64),
        item_write(second, "the second of one input", "c" * 64),
    ]
    batch = runs_pb2.RecordRequest(run_id=run.id, token=token, ops=ops, batch_id="items")

    (result,) = (await engine.record_many([batch])).results

    assert result.code == 0
    stored = await runs.runs.get_run(run.id)
    assert [[i.output for i in s.items] for s in stored.steps] == [
        ["from the new input"],
        ["the first of one input"],
    ]


async def test_an_item_written_again_from_the_same_input_in_another_batch_keeps_the_first(
    runs: Clients,
) -> None:
    """Two batches, each alone in its RecordMany (on PostgreSQL, each the hot path's upsert),
    write one item from the same input, as a fan-out item done again after its write's
    answer was lost: the second changes nothing, the first stays as stored."""
    engine, run, token = await claimed(runs)
    step_id = run.steps[0].id
    for batch_id, output in (("first", "the first answer"), ("again", "a second answer")):
        ops = [item_write(step_id, output, "c" * 64)]
        batch = runs_pb2.RecordRequest(run_id=run.id, token=token, ops=ops, batch_id=batch_id)

        (result,) = (await engine.record_many([batch])).results

        assert result.code == 0, result.message
    stored = await runs.runs.get_run(run.id)
    assert [(i.index, i.output) for i in stored.steps[0].items] == [(0, "the first answer")]


async def test_a_brief_get_run_is_the_run_without_its_steps(api: Clients) -> None:
    """What an SSE connect asks: the status, from one row."""
    engine, run, token = await claimed(api, steps=3)
    await engine.record(run.id, token, [runs_pb2.WriteOp(event=draft(ev.STEP_DELTA, text="x"))])

    full = await api.runs.get_run(run.id)
    brief = await api.runs.get_run(run.id, brief=True)

    assert len(full.steps) == 3 and list(brief.steps) == []
    expected = pb.Run()
    expected.CopyFrom(full)
    del expected.steps[:]
    expected.phase = ""
    assert brief == expected
    assert brief.status == ev.RUNNING and brief.last_seq == 2
    with pytest.raises(NotFound):
        await api.runs.get_run(MISSING, brief=True)


async def test_a_step_saving_its_findings_again_stores_them_once(api: Clients) -> None:
    """A tool step run again in the same run (after a handover, a drain, or a save whose
    answer was lost) reports the same findings: the run lists them once, new ones added."""
    engine, run, token = await claimed(api)
    step_id = run.steps[0].id
    first = [
        pb.Finding(file="a.py", line=1, severity="high", category="bug", message="off by one"),
        pb.Finding(file="b.py", line=2, severity="low", category="style", message="long line"),
    ]
    again = [*first, pb.Finding(file="c.py", line=3, severity="low", message="new")]
    await engine.save_artifacts(run.id, token, step_id, findings=first)
    await engine.save_artifacts(run.id, token, step_id, findings=again)
    stored = await api.runs.list_findings(run.id)
    assert sorted((f.file, f.line, f.message) for f in stored) == [
        ("a.py", 1, "off by one"),
        ("b.py", 2, "long line"),
        ("c.py", 3, "new"),
    ]


async def test_a_batch_replayed_after_its_run_was_swept_is_refused(
    runs: Clients, db: Direct
) -> None:
    """The batch committed, its answer was lost, the lease expired and the sweeper failed the
    run (appending run_failed with the same token). The retry must learn the run is gone; it
    was answered with the batch's events shifted by one, run_failed among them."""
    engine, run, token = await claimed(runs, ttl_s=0.3)
    step = run.steps[0]
    ops = [runs_pb2.WriteOp(event=draft(ev.STEP_DELTA, step_id=step.id, text="x"))]
    await engine.record(run.id, token, ops, batch_id="lost-answer")
    await eventually(
        lambda: runs.runs.get_run(run.id),
        lambda r: r.status == ev.FAILED,
        timeout_s=10.0,
        what="the run swept",
    )
    with pytest.raises(FailedPrecondition):
        await engine.record(run.id, token, ops, batch_id="lost-answer")
    events = await db.events(run.tenant_id, run.id)
    assert seqs_and_types(events) == [(1, ev.RUN_STARTED), (2, ev.STEP_DELTA), (3, ev.RUN_FAILED)]


@pytest.mark.parametrize(
    ("artifacts", "findings", "field"),
    [
        ([pb.Artifact(name="p", media_type="m" * 101, content="x")], [], "artifacts[0].media_type"),
        ([], [pb.Finding(file="a", severity="s" * 21, message="m")], "findings[0].severity"),
        ([], [pb.Finding(file="a", severity="low", category="c" * 101, message="m")],
         "findings[0].category"),
    ],
)  # fmt: skip
async def test_artifacts_wider_than_their_columns_are_refused_by_name(
    api: Clients, artifacts: list[pb.Artifact], findings: list[pb.Finding], field: str
) -> None:
    """SQLite kept them; PostgreSQL failed the write as INTERNAL."""
    engine, run, token = await claimed(api)
    with pytest.raises(InvalidArgument) as refused:
        await engine.save_artifacts(run.id, token, run.steps[0].id, artifacts, findings)
    assert refused.value.field == field
    assert await api.runs.list_findings(run.id) == []


async def test_the_workflow_list_stays_small_however_much_the_steps_produced(
    runs: Clients,
) -> None:
    """The list carries each step's definition and state, not its output, alternatives or
    items: 30 results of 1.2 MB made it outgrow a message (32 MB), and the page's sign-in and
    list failed for that tenant for good."""
    big = "x" * 1_200_000
    ids = []
    for i in range(30):
        engine, run, token = await claimed(runs, steps=1, name=f"big-{i}")
        step = run.steps[0]
        await engine.put_step_item(run.id, token, step.id, pb.StepItem(index=0, output="item"))
        change = runs_pb2.StepChange(status=ev.COMPLETED, output=big, output_tokens=9)
        await engine.update_step(run.id, token, step.id, change)
        await engine.finish_run(run.id, token, ev.COMPLETED)
        ids.append(run.workflow_id)

    listed = await runs.runs.list_workflows()

    assert sorted(w.id for w in listed) == sorted(ids)
    for workflow in listed:
        assert workflow.status == ev.COMPLETED
        (step,) = workflow.steps
        assert (step.name, step.status, step.output_tokens) == ("s0", ev.COMPLETED, 9)
        assert step.output == "" and list(step.items) == [] and step.prompt == ""
    whole = await runs.runs.get_workflow(ids[0])
    assert whole.steps[0].output == big and [i.output for i in whole.steps[0].items] == ["item"]
    assert whole.steps[0].prompt == whole.steps[0].spec.prompt == "begin"


async def test_the_workflow_list_stays_small_however_long_the_prompts(runs: Clients) -> None:
    """Nor its prompt: each came twice (the step's and its spec's), and two workflows with a
    12 MB prompt (a long generated implementation prompt, many times over) made the tenant's
    list outgrow a message for good."""
    long = "y" * 12_000_000
    ids = [
        (await runs.runs.create_workflow(f"long-{i}", [llm_step("s0", long)])).id for i in range(2)
    ]
    listed = await runs.runs.list_workflows()
    assert sorted(w.id for w in listed) == sorted(ids)
    assert all(s.prompt == s.spec.prompt == s.system_prompt == "" for w in listed for s in w.steps)
    whole = await runs.runs.get_workflow(ids[0])
    assert whole.steps[0].prompt == whole.steps[0].spec.prompt == long


async def test_the_workflow_list_stays_small_however_big_the_params(runs: Clients) -> None:
    """Nor its params, which also came twice: three workflows with 6 MB of params each (a
    script for the `local` provider, say) made the tenant's list outgrow a message."""
    script = "z" * 6_000_000
    ids = [
        (await runs.runs.create_workflow(f"big-{i}", [llm_step("s0", script=script)])).id
        for i in range(3)
    ]
    listed = await runs.runs.list_workflows()
    assert sorted(w.id for w in listed) == sorted(ids)
    assert all(s.params_json == s.spec.params_json == "" for w in listed for s in w.steps)
    whole = await runs.runs.get_workflow(ids[0])
    assert json.loads(whole.steps[0].params_json) == {"script": script}
    assert whole.steps[0].spec.params_json == whole.steps[0].params_json


async def test_a_step_that_answered_nothing_is_completed_with_its_empty_output(
    api: Clients, db: Direct
) -> None:
    """An empty answer is an output: stored as NULL, its completed step read as one that never
    ran (invariant 5), on the hot path and the general one alike."""
    assert api.engine is not None
    workflow = await api.runs.create_workflow(
        "quiet", [llm_step("empty", script=""), llm_step("next", "after {{ steps.empty.output }}")]
    )
    run = await api.runs.create_run(workflow.id)
    [e async for e in api.engine.execute(run.id)]

    assert (await api.runs.get_run(run.id)).status == ev.COMPLETED
    async with db.sessions() as session:
        rows = (
            await session.execute(
                select(Step.name, Step.status, Step.output)
                .where(Step.workflow_id == workflow.id)
                .order_by(Step.position)
            )
        ).all()
    assert tuple(rows[0]) == ("empty", ev.COMPLETED, "")
    assert rows[1].status == ev.COMPLETED and rows[1].output


# PostgreSQL alone: SQLite runs one writer at a time, so the race cannot happen there.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_run_completing_as_a_new_one_is_asked_for_leaves_nothing_to_run(
    runs: Clients, database_url: str
) -> None:
    """The stampede's race: the new run's check read the steps before the latest run's
    completion committed, and its insert, let through by that commit, made a run of a
    workflow with nothing left to run. The run is active until that commit: the new one is
    refused at once, without waiting on the run's row while it holds the workflow's (which
    deadlocked with a cancel of that run)."""
    _, run, _ = await claimed(runs, steps=2, name="racing")
    finishing = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        finish = finishing.transaction()
        await finish.start()  # the engine's last batch, not yet committed
        await finishing.execute(
            "UPDATE steps SET status = 'completed', output = 'x' WHERE workflow_id = $1",
            run.workflow_id,
        )
        await finishing.execute("UPDATE runs SET status = 'completed' WHERE id = $1", run.id)
        with pytest.raises(FailedPrecondition, match=f"has an active run {run.id}"):
            await asyncio.wait_for(runs.runs.create_run(run.workflow_id), timeout=5)
        await finish.commit()
        with pytest.raises(FailedPrecondition, match="every step completed"):
            await runs.runs.create_run(run.workflow_id)
    finally:
        await finishing.close()
    listed = await runs.runs.list_runs(run.workflow_id)
    assert [r.id for r in listed] == [run.id]

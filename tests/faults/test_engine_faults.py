"""Engines that die (SIGKILL), drain (SIGTERM) or freeze (SIGSTOP) mid-run, with two engine
replicas and two runs replicas: no run stays active, no result is lost or redone, and a
swept engine writes nothing more."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import random
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from nyxflow import events as ev
from nyxflow.client import EngineClient
from nyxflow.errors import STALE_TOKEN_PREFIX
from tests.e2e.test_orphans import _start_long_run
from tests.faults.helpers import (
    db_clock,
    db_events,
    db_events_at,
    engine_id,
    fetch,
    grpc_clients,
    log_entries,
    run_row,
    wait_status,
)
from tests.faults.invariants import assert_invariants
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.ports import free_port
from tests.support.processes import LEASE_TTL_S, ProcessStack
from tests.support.sse_client import frames, read_events

# The bound, kill -> `failed` (or requeued and claimed again) by the database's clock:
# the lease runs out at most TTL after the kill (its last renewal came before), and the next
# sweep (every 0.5 s) finds it. Only the polling that waits for it gets slack.
SWEEP_DEADLINE_S = 2 * LEASE_TTL_S
POLL_SLACK_S = 2.0
# How long a test waits for a draining engine's pause or handover: polling only, ample for a
# stalled machine. A sweep's doing instead shows in the status or reason, and the grace is
# checked on the database's clock.
DRAIN_WAIT_S = 10.0
ROUNDS = 25  # the kills over the suite; every third one with on_orphan: resume
FINISHED = frozenset(ev.FINISHED_RUN_STATUSES)


def fan_out_steps() -> list[dict[str, Any]]:
    return [
        {"name": "Topics", "params": {"items": 13, "tokens": 5, "token_delay_ms": 20}},
        {
            "name": "Each",
            "kind": "fan_out",
            "source": "Topics",
            "concurrency": 2,
            "prompt": "Detail {{ item }}",
            "params": {"tokens": 10, "token_delay_ms": 20},
        },
    ]


def chain_steps(count: int = 30) -> list[dict[str, Any]]:
    chain = steps(1, tokens=5, token_delay_ms=10)
    for i in range(1, count):
        chain.append(
            {**chain[0], "name": f"s{i}", "prompt": f"go on {{{{ steps.s{i - 1}.output }}}}"}
        )
    return chain


async def _steps_of(dsn: str, workflow_id: str) -> dict[str, dict[str, Any]]:
    rows = await fetch(
        dsn, "SELECT id, name, status, output FROM steps WHERE workflow_id = $1", workflow_id
    )
    return {r["id"]: r for r in rows}


async def _items_of(dsn: str, workflow_id: str) -> dict[int, str]:
    rows = await fetch(
        dsn,
        "SELECT i.item_index, i.output FROM step_items i JOIN steps s ON s.id = i.step_id"
        " WHERE s.workflow_id = $1",
        workflow_id,
    )
    return {r["item_index"]: r["output"] for r in rows}


async def _done_rows(dsn: str, workflow_id: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The workflow's completed steps (id, output, finished_at) and its items (id, output),
    by id, as the database holds them."""
    steps_done = await fetch(
        dsn,
        "SELECT id, output, finished_at FROM steps WHERE workflow_id = $1 AND status = 'completed'",
        workflow_id,
    )
    items = await fetch(
        dsn,
        "SELECT i.id, i.item_index, i.output FROM step_items i JOIN steps s ON s.id = i.step_id"
        " WHERE s.workflow_id = $1",
        workflow_id,
    )
    return {"steps": {r["id"]: r for r in steps_done}, "items": {r["id"]: r for r in items}}


async def _execute_until(
    engine: EngineClient, run_id: str, fan: bool, target: int, rng: random.Random
) -> list[Any]:
    """Follow the run on `engine` until `target` items / steps are done, then a random
    few ms more, so that the kill lands anywhere: mid-token, mid-write, between steps. With
    `target` 0, less than a chain's first step takes (50 ms), so that it lands in it."""
    seen: list[Any] = []
    done = 0
    source = engine.execute(run_id)
    try:
        async for event in source:
            seen.append(event)
            if event.type == (ev.FAN_OUT_PROGRESS if fan else ev.STEP_COMPLETED):
                done += 1
            if done >= target:
                break
        await asyncio.sleep(rng.uniform(0, 0.15 if target else 0.04))
    finally:
        await source.aclose()
    return seen


@pytest.mark.timeout(480)
async def test_sigkill_engine_replicas_at_random_moments(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """25 kills. Every third workflow says `on_orphan: resume`: its run goes on by itself on
    a live replica; the others fail as orphans and are resumed by hand on the survivor."""
    dsn = stack.database_url
    second_port = free_port()
    stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{second_port}")
    stack.start("engine2")
    seed = int(os.environ.get("NYXFLOW_FAULT_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    print(f"fault seed {seed} (NYXFLOW_FAULT_SEED to replay)")
    names = ["engine", "engine2"]
    took: list[float] = []  # kill -> failed, or -> claimed again, by the database's clock
    try:
        async with grpc_clients(stack.runs_addr, stack.engine_addr, f"127.0.0.1:{second_port}") as (
            _,
            engines,
        ):
            for round_ in range(ROUNDS):
                fan, resume = round_ % 2 == 0, round_ % 3 == 2
                victim, survivor = round_ % 2, 1 - round_ % 2
                policy = {"on_orphan": "resume"} if resume else {}
                workflow = await create_workflow(
                    http,
                    stack,
                    f"kill-{round_}",
                    fan_out_steps() if fan else chain_steps(),
                    **policy,
                )
                run_id = await start_run(http, stack, workflow["id"])
                # Enough left after the target (and the random wait) that the kill lands mid-run:
                # 13 items two at a time, 200 ms each; 30 steps of 50 ms.
                # 0: the kill lands in the first step (the source, in a fan-out); the first
                # chain always has it.
                target = rng.randint(0, 10) if fan else 0 if round_ == 1 else rng.randint(0, 24)
                seen = await _execute_until(engines[victim], run_id, fan, target, rng)
                claimers = (engine_id(stack, names[victim]), engine_id(stack, names[survivor]))
                killed_at = await db_clock(dsn)  # read just before: the bound is not flattered
                stack.kill(names[victim])
                done_at_kill = await _done_rows(dsn, workflow["id"])
                kind = (
                    f"{'fan-out' if fan else 'chain'}, on_orphan {'resume' if resume else 'fail'}"
                )
                context = f"round {round_} (seed {seed}, {kind})"
                if resume:
                    runs = [run_id]
                    took.append(await _taken_over(dsn, run_id, killed_at, claimers, context))
                # The dead replica comes back while the sweeper and the other replica work (a
                # resumable run once the other replica holds it, so it is the one that ends it).
                restarting = asyncio.create_task(asyncio.to_thread(stack.start, names[victim]))
                if resume:
                    await _completed_after_handover(dsn, run_id, context)
                else:
                    swept, resumed = await _failed_then_resumed(
                        http, stack, run_id, killed_at, engines[survivor], context
                    )
                    took.append(swept)
                    runs = [run_id, resumed]
                await restarting

                # What the engine reported done before it died is there, unchanged; all is done.
                final_steps = await _steps_of(dsn, workflow["id"])
                final_items = await _items_of(dsn, workflow["id"])
                for event in seen:
                    if event.type == ev.STEP_COMPLETED:
                        data = _json(event.data_json)
                        if "output" in data:  # a fan-out's is its items, checked below
                            assert final_steps[data["step_id"]]["output"] == data["output"], context
                    elif event.type == ev.FAN_OUT_PROGRESS:
                        data = _json(event.data_json)
                        assert data["index"] in final_items, context
                # What was done in the database at the kill is there as it was: not lost, not
                # done again (a step redone has a new finished_at, an item redone a new row).
                done_now = await _done_rows(dsn, workflow["id"])
                for table, rows in done_at_kill.items():
                    changed = {k: (v, done_now[table].get(k)) for k, v in rows.items()}
                    changed = {k: pair for k, pair in changed.items() if pair[0] != pair[1]}
                    assert not changed, f"{context}: {table} changed since the kill: {changed}"
                if fan:
                    assert sorted(final_items) == list(range(13)), context
                assert {s["status"] for s in final_steps.values()} == {ev.COMPLETED}, context
                await _nothing_redone_but_the_one_in_flight(dsn, runs, context)
    finally:
        with_engine2 = stack.procs.get("engine2")
        if with_engine2 is not None:
            stack.kill("engine2")
        if "engine" not in stack.procs:
            stack.start("engine")
    print(f"kill -> failed or claimed again: max {max(took, default=0):.2f} s of {len(took)}")
    await assert_invariants(dsn)


async def _taken_over(
    dsn: str, run_id: str, killed_at: float, claimers: tuple[str, str], context: str
) -> float:
    """`on_orphan: resume`: requeued, then claimed by the replica that was not killed (its
    engine id is the owner its claim records), both within 2 x TTL of the kill by the
    database's clock. The rest of the run takes what its steps take, and is waited for after.
    """
    events = await eventually(
        functools.partial(db_events_at, dsn, run_id),
        lambda es: _types(es).count(ev.RUN_STARTED) >= 2 or ev.RUN_FAILED in _types(es),
        timeout_s=SWEEP_DEADLINE_S + POLL_SLACK_S,
        interval_s=0.05,
        what=f"{context}: the orphan requeued and claimed again",
    )
    types = [e["type"] for e in events]
    assert types.count(ev.RUN_REQUEUED) == 1 and ev.RUN_FAILED not in types, f"{context}: {types}"
    requeued = next(e for e in events if e["type"] == ev.RUN_REQUEUED)
    claims = [e for e in events if e["type"] == ev.RUN_STARTED]
    assert [_json(e["data"])["owner"] for e in claims] == list(claimers), (
        f"{context}: claims {[_json(e['data']) for e in claims]}, killed/other {claimers}"
    )
    for what, event in (("requeued", requeued), ("claimed again", claims[1])):
        took = event["created_at"] - killed_at
        assert took <= SWEEP_DEADLINE_S, f"{context}: {what} {took:.2f} s after the kill"
    return float(claims[1]["created_at"] - killed_at)


async def _completed_after_handover(dsn: str, run_id: str, context: str) -> None:
    done = await wait_status(dsn, run_id, FINISHED, 30)
    assert (done["status"], done["error"]) == (ev.COMPLETED, None), f"{context}: {done}"
    types = [e["type"] for e in await db_events(dsn, run_id)]
    assert types.count(ev.RUN_STARTED) == 2, f"{context}: {types}"
    assert types.count(ev.RUN_REQUEUED) == 1 and ev.RUN_FAILED not in types, f"{context}: {types}"


async def _failed_then_resumed(
    http: httpx.AsyncClient,
    stack: ProcessStack,
    run_id: str,
    killed_at: float,
    survivor: EngineClient,
    context: str,
) -> tuple[float, str]:
    """`on_orphan: fail`: failed as an orphan within 2 x TTL, then resumed by hand on the
    survivor; how long the sweep took, and the new run's id."""
    dsn = stack.database_url
    swept = await wait_status(dsn, run_id, FINISHED, SWEEP_DEADLINE_S + POLL_SLACK_S)
    assert swept["status"] == ev.FAILED, context
    assert swept["error"] == ev.ORPHAN_ERROR, context
    took = swept["finished_at"] - killed_at
    assert took <= SWEEP_DEADLINE_S, f"{context}: failed {took:.2f} s after the kill"
    crashed = await db_events(dsn, run_id)
    assert [e["type"] for e in crashed].count(ev.RUN_FAILED) == 1, context
    statuses = {s["status"] for s in (await _steps_of(dsn, str(swept["workflow_id"]))).values()}
    assert ev.RUNNING not in statuses, context
    resumed = await http.post(f"/v1/workflows/{swept['workflow_id']}/resume", headers=stack.headers)
    assert resumed.status_code == 201, resumed.text
    second = str(resumed.json()["id"])
    events = [e async for e in survivor.execute(second)]
    # The stream ends early only if the execution stopped (a lost lease, say): the stored run
    # tells which.
    ended = "" if events[-1].type == ev.RUN_COMPLETED else f"; stored: {await run_row(dsn, second)}"
    assert events[-1].type == ev.RUN_COMPLETED, f"{context}: {events[-1]}{ended}"
    return float(took), second


async def _nothing_redone_but_the_one_in_flight(dsn: str, run_ids: list[str], context: str) -> None:
    """Across the runs of one workflow, in order: a step starts again only if it had not
    completed before the kill, at most one does, and no fan-out item is done twice."""
    started: Counter[str] = Counter()
    completed: set[str] = set()
    twice_done_before: list[str] = []
    progress: Counter[int] = Counter()
    for rid in run_ids:
        for e in await db_events(dsn, rid):
            data = _json(e["data"])
            if e["type"] == ev.STEP_STARTED:
                started[data["step_id"]] += 1
                if data["step_id"] in completed:
                    twice_done_before.append(data["step_id"])
            elif e["type"] == ev.STEP_COMPLETED:
                completed.add(data["step_id"])
            elif e["type"] == ev.FAN_OUT_PROGRESS:
                progress[data["index"]] += 1
    twice = [sid for sid, n in started.items() if n > 1]
    assert max(started.values()) <= 2 and len(twice) <= 1, f"{context}: {started}"
    assert not twice_done_before, f"{context}: completed steps ran again: {twice_done_before}"
    assert all(n == 1 for n in progress.values()), f"{context}: {progress}"


def _exit_time(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> asyncio.Future[float]:
    """When `proc` exits, by time.monotonic(), seen by a thread blocked in wait() (infinity if
    it has not within `timeout_s`)."""

    def wait() -> float:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return math.inf
        return time.monotonic()

    return asyncio.ensure_future(asyncio.to_thread(wait))


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def _json(data: Any) -> dict[str, Any]:
    """Event data as stored (JSON comes back as text from asyncpg) or as sent."""
    value = json.loads(data) if isinstance(data, str) else data
    assert isinstance(value, dict)
    return value


async def test_sigterm_engine_pauses_every_run_within_the_grace(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Every run's pause is in the database within the grace period of the SIGTERM, by the
    database's clock (read just before the signal, against each `run_paused`'s `created_at`),
    and the process is gone within it too (the test's clock, from just before the signal)."""
    dsn = stack.database_url
    grace = float(stack.env()["NYXFLOW_SHUTDOWN_GRACE_S"])
    run_ids = [await _start_long_run(http, stack, f"drain-{i}") for i in range(3)]
    proc = stack.procs["engine"]
    exited = _exit_time(proc)
    terminated_at, sent_at = await db_clock(dsn), time.monotonic()
    stack.signal("engine", signal.SIGTERM)
    try:
        # The draining engine records the pause itself, before any sweep could (TTL 2 s).
        for run_id in run_ids:
            run = await wait_status(dsn, run_id, FINISHED, DRAIN_WAIT_S)
            assert run["status"] == ev.PAUSED and run["error"] == "engine shut down"
            assert run["lease_expires_at"] is None
            events = await db_events_at(dsn, run_id)
            assert events[-1]["type"] == ev.RUN_PAUSED
            took = events[-1]["created_at"] - terminated_at
            assert took <= grace, f"{run_id} paused {took:.2f} s after SIGTERM"
            statuses = {s["status"] for s in (await _steps_of(dsn, run["workflow_id"])).values()}
            assert ev.RUNNING not in statuses
        gone = await exited - sent_at
        assert gone <= grace, f"the engine exited {gone:.2f} s after SIGTERM"
    finally:
        stack.procs.pop("engine", None)
        stack.start("engine")
    # Paused is resumable: the same workflow completes on the restarted engine.
    workflow_id = str((await run_row(dsn, run_ids[0]))["workflow_id"])
    resumed = await http.post(f"/v1/workflows/{workflow_id}/resume", headers=stack.headers)
    assert resumed.status_code == 201, resumed.text
    streamed = await read_events(http, f"/v1/runs/{resumed.json()['id']}/events", stack.headers)
    assert streamed[-1].event == ev.RUN_COMPLETED
    # The other two stay paused: not active, so the invariants hold.
    await assert_invariants(dsn)


async def test_sigterm_engine_hands_resumable_runs_to_another_replica(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """`on_orphan: resume`: a draining engine hands its runs over at once (no lease to wait
    out) and the other replica finishes them; a browser following one sees the whole run on
    one stream. The workflow without the policy is paused as before."""
    dsn = stack.database_url
    stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{free_port()}")
    stack.start("engine2")
    long = steps(3, tokens=60, token_delay_ms=20)
    handed, kept = [], []
    for i in range(2):
        workflow = await create_workflow(http, stack, f"handover-{i}", long, on_orphan="resume")
        handed.append(await start_run(http, stack, workflow["id"]))
    workflow = await create_workflow(http, stack, "paused", long)
    kept.append(await start_run(http, stack, workflow["id"]))
    # A browser connects (it starts the run on the first engine) and keeps following.
    url = f"/v1/runs/{handed[0]}/events"
    following = asyncio.create_task(read_events(http, url, stack.headers))
    for run_id in [*handed[1:], *kept]:
        await read_events(http, f"/v1/runs/{run_id}/events", stack.headers, limit=3)
    await wait_status(dsn, handed[0], frozenset({ev.RUNNING}), 10)
    grace = float(stack.env()["NYXFLOW_SHUTDOWN_GRACE_S"])
    proc = stack.procs["engine"]
    exited = _exit_time(proc)
    # Measured as in the test above: the database's clock for the runs, ours for the process.
    terminated_at, sent_at = await db_clock(dsn), time.monotonic()
    stack.signal("engine", signal.SIGTERM)
    try:
        for run_id in handed:
            requeued = await eventually(
                functools.partial(db_events_at, dsn, run_id),
                lambda events: ev.RUN_REQUEUED in _types(events),
                timeout_s=DRAIN_WAIT_S,  # a sweep's requeue would give another reason
                interval_s=0.05,
                what=f"{run_id} handed over",
            )
            handover = [e for e in requeued if e["type"] == ev.RUN_REQUEUED]
            reason = [_json(e["data"]) for e in handover]
            assert reason == [{"status": ev.PENDING, "reason": "engine shut down", "requeues": 1}]
            took = handover[0]["created_at"] - terminated_at
            assert took <= grace, f"{run_id} handed over {took:.2f} s after SIGTERM"
        paused = await wait_status(dsn, kept[0], FINISHED, DRAIN_WAIT_S)
        assert (paused["status"], paused["error"]) == (ev.PAUSED, "engine shut down")
        pause = (await db_events_at(dsn, kept[0]))[-1]
        assert pause["type"] == ev.RUN_PAUSED, pause
        took = pause["created_at"] - terminated_at
        assert took <= grace, f"{kept[0]} paused {took:.2f} s after SIGTERM"
        gone = await exited - sent_at
        assert gone <= grace, f"the engine exited {gone:.2f} s after SIGTERM"

        for run_id in handed:
            done = await wait_status(dsn, run_id, FINISHED, 30)
            assert done["status"] == ev.COMPLETED, done
            events = await db_events(dsn, run_id)
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            owners = [_json(e["data"])["owner"] for e in events if e["type"] == ev.RUN_STARTED]
            assert len(owners) == 2 and owners[0] != owners[1], owners
            assert ev.RUN_FAILED not in [e["type"] for e in events]
        streamed = await asyncio.wait_for(following, 30)
        assert [f.id for f in streamed] == [str(n) for n in range(1, len(streamed) + 1)]
        types = [f.event for f in streamed]
        assert ev.RUN_REQUEUED in types and types[-1] == ev.RUN_COMPLETED
        assert types.count(ev.RUN_STARTED) == 2
    finally:
        stack.procs.pop("engine", None)
        stack.start("engine")
        stack.kill("engine2")
    await assert_invariants(dsn)


async def test_frozen_engine_is_failed_once_by_two_sweeping_runs_replicas(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Two chains and two fan-outs, mid-run, when the engine freezes. Each run is swept once,
    by one of the two runs replicas, with one event. After SIGCONT the engine does try to
    write (the group commit of what it was streaming), and runs refuses every batch: no event,
    run, step or item row changes.

    A run stops at its first refusal, heartbeat or write: a group commit of 0.5 s keeps
    streamed text waiting in every writer, so that some write is on its way at SIGCONT before
    the heartbeat's refusal stops it (with 50 ms, a writer often has nothing waiting then)."""
    dsn = stack.database_url
    service, extra = stack.replicas["engine"]
    stack.replicas["engine"] = (service, {**extra, "NYXFLOW_GROUP_COMMIT_MS": "500"})
    stack.restart("engine")
    stack.add_replica("runs2", "runs", NYXFLOW_RUNS_LISTEN=f"127.0.0.1:{free_port()}")
    stack.start("runs2")
    try:
        run_ids = [await _start_long_run(http, stack, f"frozen-{i}") for i in range(2)]
        run_ids += [await _start_long_fan_out(http, stack, f"frozen-fan-{i}") for i in range(2)]
        stack.signal("engine", signal.SIGSTOP)
        try:
            # What a write on its way at the freeze had left is in; no lease has run out yet
            # (the last renewal came at most 0.5 s before the freeze).
            await asyncio.sleep(0.5)
            frozen = {r: await db_events(dsn, r) for r in run_ids}
            assert [(await run_row(dsn, r))["status"] for r in run_ids] == [ev.RUNNING] * 4
            swept = [
                await wait_status(dsn, r, FINISHED, SWEEP_DEADLINE_S + POLL_SLACK_S)
                for r in run_ids
            ]
            assert {(r["status"], r["error"]) for r in swept} == {(ev.FAILED, ev.ORPHAN_ERROR)}
            before = {r: await _written_for(dsn, r) for r in run_ids}
            for run_id, written in before.items():
                # The sweep's one event, on top of what the engine had written.
                added = written["events"][len(frozen[run_id]) :]
                assert written["events"][: len(frozen[run_id])] == frozen[run_id], run_id
                assert _types(added) == [ev.RUN_FAILED], f"{run_id}: the sweep wrote {added}"
            assert all(w["items"] for w in list(before.values())[2:]), "no fan-out item written"
            log_offset = len(stack.log_text("engine"))  # it writes nothing while frozen
            stack.signal("engine", signal.SIGCONT)
            # The zombie's heartbeats and group commits (0.5 s, 50 ms) all come due now.
            await asyncio.sleep(LEASE_TTL_S)

            def refused_writes() -> list[dict[str, Any]]:
                text = stack.log_text("engine")[log_offset:]
                return [e for e in log_entries(text, "write refused") if e["run_id"] in run_ids]

            # Waited for in its log: a loaded machine may be slow to run the woken process.
            refused = await eventually(
                lambda: asyncio.to_thread(refused_writes),
                bool,
                timeout_s=10,
                what="the frozen engine's writes refused after SIGCONT",
            )
            for run_id in run_ids:
                assert await _written_for(dsn, run_id) == before[run_id], run_id
            assert all(e["error"].startswith(STALE_TOKEN_PREFIX) for e in refused), refused
            print(f"refused after SIGCONT: {Counter(e['run_id'] for e in refused)}")
        finally:
            stack.replicas["engine"] = (service, extra)
            stack.restart("engine")
    finally:
        stack.kill("runs2")
    await assert_invariants(dsn)
    # Both replicas were sweeping (each logs what it swept); each run was swept by one of them,
    # once.
    by_replica = {
        name: [
            e["run_id"]
            for e in log_entries(stack.log_text(name), "swept orphaned run")
            if e["run_id"] in run_ids
        ]
        for name in ("runs", "runs2")
    }
    sweeps = Counter(r for swept in by_replica.values() for r in swept)
    assert [sweeps[r] for r in run_ids] == [1] * 4, by_replica
    # Which replica got there first is the race's to decide (both often do): not asserted.
    print(f"swept by runs/runs2: {len(by_replica['runs'])}/{len(by_replica['runs2'])}")


async def test_frozen_engines_resumable_run_is_requeued_once_and_finished_by_another(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Scenario 8 with `on_orphan: resume`: two runs replicas sweep the frozen engine's run,
    which is requeued once in total (one event, one replica's log line), claimed and finished
    by a second engine; after SIGCONT nothing the zombie sends lands."""
    dsn = stack.database_url
    stack.add_replica("runs2", "runs", NYXFLOW_RUNS_LISTEN=f"127.0.0.1:{free_port()}")
    stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{free_port()}")
    stack.start("runs2")
    try:
        workflow = await create_workflow(
            http, stack, "frozen-resume", steps(4, tokens=40, token_delay_ms=20),
            on_orphan="resume",
        )  # fmt: skip
        run_id = await start_run(http, stack, workflow["id"])
        await read_events(http, f"/v1/runs/{run_id}/events", stack.headers, limit=3)
        frozen_id = engine_id(stack, "engine")
        stack.signal("engine", signal.SIGSTOP)
        try:
            stack.start("engine2")  # the only live engine: the requeued run can go nowhere else
            claimers = [frozen_id, engine_id(stack, "engine2")]
            done = await wait_status(dsn, run_id, FINISHED, 30)
            assert (done["status"], done["error"]) == (ev.COMPLETED, None), done
            before = await _written_for(dsn, run_id)
            stack.signal("engine", signal.SIGCONT)
            await asyncio.sleep(LEASE_TTL_S)  # its heartbeats and writes all come due now
            assert await _written_for(dsn, run_id) == before
        finally:
            stack.restart("engine")
        events = before["events"]
        types = _types(events)
        assert types.count(ev.RUN_REQUEUED) == 1 and ev.RUN_FAILED not in types, types
        owners = [_json(e["data"])["owner"] for e in events if e["type"] == ev.RUN_STARTED]
        assert owners == claimers, owners
        # Each step completed once over the whole stream (the one in flight may start twice).
        done_steps = Counter(
            _json(e["data"])["name"] for e in events if e["type"] == ev.STEP_COMPLETED
        )
        assert done_steps == Counter({f"s{i}": 1 for i in range(4)}), done_steps
    finally:
        stack.kill("engine2")
        stack.kill("runs2")
    await assert_invariants(dsn)
    requeues = [
        e
        for name in ("runs", "runs2")
        for e in log_entries(
            stack.log_text(name), "swept orphaned run, requeued for another engine"
        )
        if e["run_id"] == run_id
    ]
    assert len(requeues) == 1, requeues


async def _start_long_fan_out(http: httpx.AsyncClient, stack: ProcessStack, name: str) -> str:
    """A fan-out of 13 items of about a second each, two at a time, with its first item done."""
    long = fan_out_steps()
    long[1] = {**long[1], "params": {"tokens": 50, "token_delay_ms": 20}}
    workflow = await create_workflow(http, stack, name, long)
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers, limit=3)
    await eventually(
        functools.partial(_items_of, stack.database_url, workflow["id"]),
        bool,
        timeout_s=10,
        what=f"{name}: a first item done",
    )
    return run_id


async def _written_for(dsn: str, run_id: str) -> dict[str, Any]:
    """Every row a run's engine writes to: the run, its events, its workflow's steps and items."""
    run = await run_row(dsn, run_id)
    return {
        "run": run,
        "events": await db_events(dsn, run_id),
        "steps": await fetch(
            dsn, "SELECT * FROM steps WHERE workflow_id = $1 ORDER BY id", run["workflow_id"]
        ),
        "items": await fetch(
            dsn,
            "SELECT i.* FROM step_items i JOIN steps s ON s.id = i.step_id"
            " WHERE s.workflow_id = $1 ORDER BY i.step_id, i.item_index",
            run["workflow_id"],
        ),
    }


async def test_a_browser_on_a_frozen_engines_stream_follows_the_run_to_another(
    stack: ProcessStack,
) -> None:
    """The browser started the run, so its gateway followed it through the engine's Execute.
    The engine froze; the run was swept, requeued and finished by the other replica, and the
    browser sat on the silent stream until gRPC's keepalive gave up, about a minute later."""
    gateway_port = free_port()
    stack.add_replica(
        "gateway2", "gateway", NYXFLOW_GATEWAY_PORT=str(gateway_port), NYXFLOW_EXECUTE_SILENCE_S="1"
    )
    stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{free_port()}")
    stack.start("gateway2")
    stack.start("engine2")
    dsn = stack.database_url
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway_port}", timeout=60
        ) as http:
            workflow = await create_workflow(
                http, stack, "frozen-follow", steps(4, tokens=20, token_delay_ms=50),
                on_orphan="resume",
            )  # fmt: skip
            run_id = await start_run(http, stack, workflow["id"])
            url = f"/v1/runs/{run_id}/events"
            seen: list[tuple[float, int, str]] = []

            async def follow() -> None:
                async with http.stream("GET", url, headers=stack.headers) as response:
                    async for frame in frames(response):
                        if frame.event is not None:
                            seen.append((time.monotonic(), frame.seq, frame.event))

            following = asyncio.ensure_future(follow())
            await eventually(lambda: _count(seen), (5).__le__, what="the first events")
            stack.signal("engine", signal.SIGSTOP)
            try:
                done = await wait_status(dsn, run_id, FINISHED, 30)
                finished_at = time.monotonic()
                assert done["status"] == ev.COMPLETED, done
                await asyncio.wait_for(following, 10)
            finally:
                stack.signal("engine", signal.SIGCONT)
                following.cancel()
        seqs = [seq for _, seq, _ in seen]
        assert seqs == list(range(1, len(seqs) + 1)) and seen[-1][2] == ev.RUN_COMPLETED
        assert seen[-1][0] - finished_at < 5, "the browser heard of the end late"
    finally:
        stack.restart("engine")
        stack.kill("engine2")
        stack.kill("gateway2")
    await assert_invariants(dsn)


async def _count(seen: list[tuple[float, int, str]]) -> int:
    return len(seen)

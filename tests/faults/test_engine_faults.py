"""Engines that die (SIGKILL), drain (SIGTERM) or freeze (SIGSTOP) mid-run, with two engine
replicas and two runs replicas: no run stays active, no result is lost or redone, and a
swept engine writes nothing more."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from nyxflow import events as ev
from nyxflow.client import EngineClient
from tests.e2e.test_orphans import _start_long_run
from tests.faults.helpers import (
    db_events,
    fetch,
    grpc_clients,
    run_row,
    wait_status,
)
from tests.faults.invariants import assert_invariants
from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.ports import free_port
from tests.support.processes import LEASE_TTL_S, ProcessStack
from tests.support.sse_client import read_events

# Kill -> lease expiry (<= TTL after the last renewal) -> next sweep (0.5 s), with slack for
# two busy cores: the README's promise is 2 x TTL.
SWEEP_DEADLINE_S = 2 * LEASE_TTL_S + 1.0
ROUNDS = 10
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


async def _execute_until(
    engine: EngineClient, run_id: str, fan: bool, target: int, rng: random.Random
) -> list[Any]:
    """Follow the run on `engine` until `target` items / steps are done, then a random
    few ms more, so that the kill lands anywhere: mid-token, mid-write, between steps."""
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
        await asyncio.sleep(rng.uniform(0, 0.15))
    finally:
        await source.aclose()
    return seen


@pytest.mark.timeout(240)
async def test_sigkill_engine_replicas_at_random_moments(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    dsn = stack.database_url
    second_port = free_port()
    stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{second_port}")
    stack.start("engine2")
    seed = int(os.environ.get("NYXFLOW_FAULT_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    print(f"fault seed {seed} (NYXFLOW_FAULT_SEED to replay)")
    names = ["engine", "engine2"]
    try:
        async with grpc_clients(stack.runs_addr, stack.engine_addr, f"127.0.0.1:{second_port}") as (
            _,
            engines,
        ):
            for round_ in range(ROUNDS):
                fan = round_ % 2 == 0
                victim, survivor = round_ % 2, 1 - round_ % 2
                workflow = await create_workflow(
                    http, stack, f"kill-{round_}", fan_out_steps() if fan else chain_steps()
                )
                run_id = await start_run(http, stack, workflow["id"])
                # Enough left after the target (and the random wait) that the kill lands mid-run:
                # 13 items two at a time, 200 ms each; 30 steps of 50 ms.
                target = rng.randint(0, 10) if fan else rng.randint(1, 24)
                seen = await _execute_until(engines[victim], run_id, fan, target, rng)
                stack.kill(names[victim])
                killed_at = time.monotonic()
                # The dead replica comes back while the sweeper and the other replica work.
                restarting = asyncio.create_task(asyncio.to_thread(stack.start, names[victim]))
                context = f"round {round_} (seed {seed}, {'fan-out' if fan else 'chain'})"

                swept = await wait_status(dsn, run_id, FINISHED, SWEEP_DEADLINE_S + 2)
                took = time.monotonic() - killed_at
                assert swept["status"] == ev.FAILED, context
                assert swept["error"] == ev.ORPHAN_ERROR, context
                assert took <= SWEEP_DEADLINE_S, f"{context}: swept after {took:.2f} s"
                crashed = await db_events(dsn, run_id)
                assert [e["type"] for e in crashed].count(ev.RUN_FAILED) == 1, context

                # What the engine reported done before it died is in the database, unchanged.
                at_sweep = await _steps_of(dsn, workflow["id"])
                items_at_sweep = await _items_of(dsn, workflow["id"])
                for event in seen:
                    if event.type == ev.STEP_COMPLETED:
                        data = _json(event.data_json)
                        step = at_sweep[data["step_id"]]
                        assert step["status"] == ev.COMPLETED, context
                        assert step["output"] == data["output"], context
                    elif event.type == ev.FAN_OUT_PROGRESS:
                        assert _json(event.data_json)["index"] in items_at_sweep, context
                assert ev.RUNNING not in {s["status"] for s in at_sweep.values()}, context

                # Resume on the survivor: only what was not done runs again.
                resumed = await http.post(
                    f"/v1/workflows/{workflow['id']}/resume", headers=stack.headers
                )
                assert resumed.status_code == 201, resumed.text
                second = resumed.json()["id"]
                events = [e async for e in engines[survivor].execute(second)]
                assert events[-1].type == ev.RUN_COMPLETED, f"{context}: {events[-1]}"
                await restarting

                final_steps = await _steps_of(dsn, workflow["id"])
                final_items = await _items_of(dsn, workflow["id"])
                for step_id, step in at_sweep.items():
                    if step["status"] == ev.COMPLETED:
                        assert final_steps[step_id]["output"] == step["output"], context
                for index, output in items_at_sweep.items():
                    assert final_items[index] == output, context
                if fan:
                    assert sorted(final_items) == list(range(13)), context
                assert {s["status"] for s in final_steps.values()} == {ev.COMPLETED}, context

                started: Counter[str] = Counter()
                progress: Counter[int] = Counter()
                for rid in (run_id, second):
                    for e in await db_events(dsn, rid):
                        if e["type"] == ev.STEP_STARTED:
                            started[_json(e["data"])["step_id"]] += 1
                        elif e["type"] == ev.FAN_OUT_PROGRESS:
                            progress[_json(e["data"])["index"]] += 1
                twice = [sid for sid, n in started.items() if n > 1]
                assert max(started.values()) <= 2 and len(twice) <= 1, f"{context}: {started}"
                for step_id in twice:  # only the one in flight at the kill ran again
                    assert at_sweep[step_id]["status"] != ev.COMPLETED, context
                assert all(n == 1 for n in progress.values()), f"{context}: {progress}"
    finally:
        with_engine2 = stack.procs.get("engine2")
        if with_engine2 is not None:
            stack.kill("engine2")
        if "engine" not in stack.procs:
            stack.start("engine")
    await assert_invariants(dsn)


def _json(data: Any) -> dict[str, Any]:
    """Event data as stored (JSON comes back as text from asyncpg) or as sent."""
    value = json.loads(data) if isinstance(data, str) else data
    assert isinstance(value, dict)
    return value


async def test_sigterm_engine_pauses_every_run_within_the_grace(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    dsn = stack.database_url
    run_ids = [await _start_long_run(http, stack, f"drain-{i}") for i in range(3)]
    proc = stack.procs["engine"]
    stack.signal("engine", signal.SIGTERM)
    terminated_at = time.monotonic()
    try:
        # The draining engine records the pause itself, before any sweep could (TTL 2 s).
        for run_id in run_ids:
            run = await wait_status(dsn, run_id, FINISHED, LEASE_TTL_S)
            assert run["status"] == ev.PAUSED and run["error"] == "engine shut down"
            assert run["lease_expires_at"] is None
            events = await db_events(dsn, run_id)
            assert events[-1]["type"] == ev.RUN_PAUSED
            statuses = {s["status"] for s in (await _steps_of(dsn, run["workflow_id"])).values()}
            assert ev.RUNNING not in statuses
        await asyncio.to_thread(proc.wait, 10)
        grace = float(stack.env()["NYXFLOW_SHUTDOWN_GRACE_S"])
        assert time.monotonic() - terminated_at <= grace + 2
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


async def test_frozen_engine_is_failed_once_by_two_sweeping_runs_replicas(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    dsn = stack.database_url
    stack.add_replica("runs2", "runs", NYXFLOW_RUNS_LISTEN=f"127.0.0.1:{free_port()}")
    stack.start("runs2")
    try:
        run_ids = [await _start_long_run(http, stack, f"frozen-{i}") for i in range(4)]
        stack.signal("engine", signal.SIGSTOP)
        try:
            swept = [await wait_status(dsn, r, FINISHED, SWEEP_DEADLINE_S + 2) for r in run_ids]
            assert {(r["status"], r["error"]) for r in swept} == {(ev.FAILED, ev.ORPHAN_ERROR)}
            before = {r: await db_events(dsn, r) for r in run_ids}
            for run_id, events in before.items():
                types = [e["type"] for e in events]
                assert types.count(ev.RUN_FAILED) == 1, f"{run_id}: {types}"
                assert types[-1] == ev.RUN_FAILED
            stack.signal("engine", signal.SIGCONT)
            # The zombie's heartbeats and group commits (0.5 s, 50 ms) all come due now.
            await asyncio.sleep(LEASE_TTL_S)
            for run_id in run_ids:
                assert await db_events(dsn, run_id) == before[run_id], run_id
                after = await run_row(dsn, run_id)
                assert (after["status"], after["last_seq"]) == (ev.FAILED, len(before[run_id]))
            log = stack.log_text("engine")
            assert "stale fencing token" in log or "lease lost" in log
        finally:
            stack.restart("engine")
    finally:
        stack.kill("runs2")
    await assert_invariants(dsn)
    # Both replicas were sweeping (each logs what it swept); either may have won.
    swept_logs = stack.log_text("runs") + stack.log_text("runs2")
    assert "swept orphaned run" in swept_logs

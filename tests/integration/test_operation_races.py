"""Operations racing each other on one workflow (PostgreSQL, where they run at once): each
answers what it would alone, never a deadlock (UNAVAILABLE) or INTERNAL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from nyxflow import events as ev
from nyxflow.client import RunsClient
from nyxflow.errors import NyxflowError
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from tests.integration.test_runs_invariants import OWNER, as_engine
from tests.support.inprocess import Clients
from tests.support.workflows import chain

# The deadlock struck a few rounds in 80: enough rounds that a run without the fix fails.
ROUNDS = 80
CREATES = 4


async def outcome(call: Awaitable[Any]) -> str:
    try:
        await call
        return "OK"
    except NyxflowError as error:
        return f"{error.code.name}: {error.message}"


async def race_create_run(
    runs: Clients, start: Callable[[pb.Run], Awaitable[None]], end: Callable[[str], Awaitable[Any]]
) -> list[str]:
    """Round after round, `end` the workflow's latest run (after `start` has it where it
    should be) while CreateRun is called on the workflow: what did not answer as it should.
    The runs after the first, so that CreateRun takes its general path."""
    workflow = await runs.runs.create_workflow("race", chain(2))
    run = await runs.runs.create_run(workflow.id)
    wrong: list[str] = []
    for _ in range(ROUNDS):
        await start(run)
        results = await asyncio.gather(
            outcome(end(run.id)),
            *(outcome(runs.runs.create_run(workflow.id)) for _ in range(CREATES)),
        )
        if results[0] != "OK":
            wrong.append(f"end: {results[0]}")
        # An active run refuses the new one; once it has ended, the new one may be made.
        wrong += [f"create_run: {r}" for r in results[1:] if not r.startswith(("OK", "FAILED_"))]
        for listed in await runs.runs.list_runs(workflow.id):
            if listed.status in ev.ACTIVE_RUN_STATUSES:
                await runs.runs.cancel_run(listed.id)
        run = await runs.runs.resume_workflow(workflow.id)
    return wrong


async def pending(_: pb.Run) -> None:
    pass


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("end", ["cancel", "pause"])
async def test_cancel_or_pause_of_a_pending_run_while_create_run(runs: Clients, end: str) -> None:
    """The two deadlocked: one of them answered UNAVAILABLE ("a concurrent change conflicted
    with this one") after PostgreSQL's deadlock timeout."""
    ender = runs.runs.cancel_run if end == "cancel" else runs.runs.pause_run
    assert await race_create_run(runs, pending, ender) == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_cancel_of_a_running_run_while_create_run(runs: Clients) -> None:
    engines: dict[str, RunsClient] = {}

    async def claimed(run: pb.Run) -> None:
        engine = engines.setdefault(run.tenant_id, as_engine(runs, run.tenant_id))
        assert (await engine.claim_run(run.id, OWNER, 30.0)).won

    assert await race_create_run(runs, claimed, runs.runs.cancel_run) == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("end", ["cancel", "pause"])
async def test_cancel_or_pause_waits_for_no_lock_on_the_workflow(
    runs: Clients, database_url: str, end: str
) -> None:
    """Ending a run writes its row once. Written twice (its last event's number, then its
    status), the second write checked the row's foreign key, which waits for whoever holds
    the workflow's row: a cancel stood behind any operation on the workflow, and deadlocked
    with one that waited for the run in turn."""
    workflow = await runs.runs.create_workflow("held", chain(2))
    run = await runs.runs.create_run(workflow.id)
    holder = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM workflows WHERE id = $1 FOR UPDATE", workflow.id)
            ender = runs.runs.cancel_run if end == "cancel" else runs.runs.pause_run
            ended = await asyncio.wait_for(ender(run.id), timeout=5)
    finally:
        await holder.close()
    assert ended.status == (ev.CANCELLED if end == "cancel" else ev.PAUSED)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_engine_ending_a_run_while_create_run(runs: Clients) -> None:
    """The engine's last batch, failing the run as it starts a step: the general path's (the
    hot path's one statement leaves it out), which writes the run's row twice (its fence,
    then its end), as the cancel did."""
    claims: dict[str, tuple[int, str]] = {}
    engine: list[RunsClient] = []

    async def claimed(run: pb.Run) -> None:
        if not engine:
            engine.append(as_engine(runs, run.tenant_id))
        claim = await engine[0].claim_run(run.id, OWNER, 30.0)
        assert claim.won
        claims[run.id] = (claim.token, claim.run.steps[0].id)

    async def fail(run_id: str) -> None:
        token, step_id = claims[run_id]
        change = runs_pb2.StepChange(status=ev.RUNNING)
        started = runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step_id, change=change))
        await engine[0].record(run_id, token, [started], finish_status=ev.FAILED, finish_error="x")

    assert await race_create_run(runs, claimed, fail) == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_select_alternative_of_a_generated_step_while_rerun(api: Clients) -> None:
    """The re-run dropped the generated step while the choice waited for the workflow's lock:
    the choice answered INTERNAL. Now NOT_FOUND, naming step_id."""
    assert api.engine is not None
    params = json.dumps({"tokens": 4, "items": 3})
    plan = pb.StepSpec(
        name="plan",
        kind="synthesis",
        prompt="plan",
        params_json=params,
        generates="implementation_prompt",
    )
    workflow = await api.runs.create_workflow("gen", [plan])
    run = await api.runs.create_run(workflow.id)
    seen: set[str] = set()
    for _ in range(25):
        async for _ in api.engine.execute(run.id):
            pass
        generated = [
            s for s in (await api.runs.get_workflow(workflow.id)).steps if s.auto_generated
        ]
        assert generated
        results = await asyncio.gather(
            outcome(api.runs.rerun_workflow(workflow.id)),
            *(outcome(api.runs.select_alternative(s.id, 0)) for s in generated for _ in range(3)),
        )
        seen.update(r.split(":")[0] for r in results[1:])
        run = (await api.runs.list_runs(workflow.id, limit=1))[0]
        if run.status != ev.PENDING:
            run = await api.runs.rerun_workflow(workflow.id)
    # OK (chosen before the re-run), FAILED_PRECONDITION (after it: an active run) or
    # NOT_FOUND (the step dropped while the choice waited).
    assert seen <= {"OK", "FAILED_PRECONDITION", "NOT_FOUND"}, seen
    assert "NOT_FOUND" in seen

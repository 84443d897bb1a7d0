"""Random and boundary messages for the engine's one call, Engine.Execute, through the real
embedded engine and runs services on both backends: random, empty, huge and NUL run ids,
another tenant's run, a run that is not pending, and credentials that are wrong in every way
(the internal credentials included, even the right ones: Execute takes a tenant's key only).
Every answer is a clean refusal (never UNKNOWN / INTERNAL, never a hang), an INVALID_ARGUMENT
names `run_id`, and no run starts that should not: the test's own pending run stays pending,
with no event, until its own key executes it, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nyxflow import events as ev
from nyxflow.auth import INTERNAL, TENANT, bearer_metadata, internal_metadata
from nyxflow.errors import from_rpc_error
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import engine_pb2, engine_pb2_grpc, runs_pb2, runs_pb2_grpc
from tests.fuzz.conftest import CALL_TIMEOUT_S, FUZZ, REFUSALS, engine_md, internal_md, kw, md
from tests.fuzz.test_runs_grpc import BIG, IDS
from tests.support.direct import NewTenant, direct
from tests.support.inprocess import SECRET

Metadata = tuple[tuple[str, str], ...]
HEADER = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)
RUN_IDS = st.one_of(IDS, st.sampled_from([BIG, "a" * 100_000, "\n", " ", "../" * 50]))
UNAUTHENTICATED = frozenset({grpc.StatusCode.UNAUTHENTICATED})


@pytest.fixture
async def engine(engine_addr: str) -> AsyncIterator[engine_pb2_grpc.EngineStub]:
    async with grpc.aio.insecure_channel(engine_addr, options=CHANNEL_OPTIONS) as chan:
        yield engine_pb2_grpc.EngineStub(chan)


@pytest.fixture
async def stranger(runs_addr: str, database_url: str) -> NewTenant:
    """Another tenant, with a key of its own."""
    async with direct(database_url) as d:
        return await d.add_tenant("stranger")


async def execute(
    engine: engine_pb2_grpc.EngineStub,
    run_id: str,
    metadata: Metadata,
    allowed: frozenset[grpc.StatusCode] = REFUSALS,
) -> list[pb.RunEvent] | None:
    """The run's events to the end of the stream, or None when refused with an allowed code;
    an INVALID_ARGUMENT names the only field there is."""
    call = engine.Execute(
        engine_pb2.ExecuteRequest(run_id=run_id), metadata=metadata, timeout=CALL_TIMEOUT_S
    )

    async def drain() -> list[pb.RunEvent]:
        return [event async for batch in call for event in batch.events]

    try:
        return await asyncio.wait_for(drain(), CALL_TIMEOUT_S + 5)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        assert code in allowed, f"{code.name}: {error.details()}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert from_rpc_error(error).field == "run_id", error.details()
        return None


async def pending_run(runs: runs_pb2_grpc.RunsStub, metadata: Metadata | None = None) -> pb.Run:
    request = runs_pb2.CreateWorkflowRequest(
        name="target", steps=[pb.StepSpec(name="a", kind="llm", prompt="hi", provider="local")]
    )
    workflow = await runs.CreateWorkflow(request, **kw(metadata))
    run: pb.Run = await runs.CreateRun(
        runs_pb2.CreateRunRequest(workflow_id=workflow.id), **kw(metadata)
    )
    return run


async def untouched(
    runs: runs_pb2_grpc.RunsStub, run: pb.Run, metadata: Metadata | None = None
) -> None:
    """Still as it was made: pending, no event, nothing claimed; and no run of the tenant runs."""
    now = await runs.GetRun(runs_pb2.GetRunRequest(run_id=run.id, brief=True), **kw(metadata))
    assert (now.status, now.last_seq, now.started_at) == (ev.PENDING, 0, 0), now
    running = await runs.ListRuns(runs_pb2.ListRunsRequest(status=ev.RUNNING), **kw(metadata))
    assert list(running.runs) == []


@FUZZ
@given(run_id=RUN_IDS)
@example(run_id="")
@example(run_id="\x00")
@example(run_id=BIG)
async def test_execute_random_ids(
    runs: runs_pb2_grpc.RunsStub, engine: engine_pb2_grpc.EngineStub, run_id: str
) -> None:
    decoy = await pending_run(runs)
    assert await execute(engine, run_id, md()) is None  # nothing has these ids
    await untouched(runs, decoy)


@FUZZ
@given(as_engine=st.booleans())
async def test_execute_another_tenants_run(
    runs: runs_pb2_grpc.RunsStub,
    engine: engine_pb2_grpc.EngineStub,
    stranger: NewTenant,
    as_engine: bool,
) -> None:
    """Another tenant's run is NOT_FOUND to this tenant's key, and the engine's credentials for
    this tenant are refused: it stays pending."""
    theirs = bearer_metadata(stranger.api_key)
    run = await pending_run(runs, theirs)
    ours = await pending_run(runs)
    caller = internal_metadata(SECRET, ours.tenant_id) if as_engine else md()
    allowed = UNAUTHENTICATED if as_engine else REFUSALS
    assert await execute(engine, run.id, caller, allowed) is None
    await untouched(runs, run, theirs)
    await untouched(runs, ours)


def bad_credentials(tenant_id: str) -> st.SearchStrategy[Metadata]:
    """Metadata that carries no right to run `tenant_id`'s runs: Execute takes a tenant's key
    only, so the internal credentials are refused even for the run's own tenant."""
    return st.one_of(
        st.just(()),
        HEADER.map(lambda v: (("authorization", v),)),
        HEADER.map(lambda key: bearer_metadata(key) if key else (("authorization", "Bearer"),)),
        HEADER.map(lambda secret: ((INTERNAL, secret), (TENANT, tenant_id))),  # a wrong secret
        st.just(engine_md()),  # the secret with no tenant
        st.just(internal_md()),  # the secret for a tenant that is not the run's
        st.uuids().map(lambda u: internal_metadata(SECRET, str(u))),
        st.just(internal_metadata(SECRET, tenant_id)),  # right, but not a tenant's key
        st.sampled_from(
            [(("authorization", "Basic dGVzdC1rZXk="),), (("authorization", "bearer  "),)]
        ),
    )


@FUZZ
@given(data=st.data())
async def test_execute_with_bad_credentials(
    runs: runs_pb2_grpc.RunsStub, engine: engine_pb2_grpc.EngineStub, data: st.DataObject
) -> None:
    """Refused, and the run is left pending; then its own key executes it, once, to the end."""
    run = await pending_run(runs)
    metadata = data.draw(bad_credentials(run.tenant_id), label="metadata")
    assert await execute(engine, run.id, metadata, REFUSALS | UNAUTHENTICATED) is None
    await untouched(runs, run)
    if data.draw(st.sampled_from([False] * 9 + [True]), label="then run it"):
        events = await execute(engine, run.id, md())
        assert events is not None
        types = [e.type for e in events]
        assert types[0] == ev.RUN_STARTED and types[-1] == ev.RUN_COMPLETED, types
        assert types.count(ev.RUN_STARTED) == 1
        assert await execute(engine, run.id, md()) is None  # not pending any more


@FUZZ
@given(state=st.sampled_from(["cancelled", "claimed", "paused"]), as_engine=st.booleans())
async def test_execute_a_run_that_is_not_pending(
    runs: runs_pb2_grpc.RunsStub, engine: engine_pb2_grpc.EngineStub, state: str, as_engine: bool
) -> None:
    """FAILED_PRECONDITION to its tenant's key (UNAUTHENTICATED to the engine's credentials),
    and the run keeps its status and its events."""
    run = await pending_run(runs)
    if state == "claimed":
        claim = runs_pb2.ClaimRunRequest(run_id=run.id, owner="another", lease_ttl_s=60)
        assert (await runs.ClaimRun(claim, **kw())).won
    elif state == "cancelled":
        await runs.CancelRun(runs_pb2.CancelRunRequest(run_id=run.id), **kw())
    else:
        await runs.PauseRun(runs_pb2.PauseRunRequest(run_id=run.id), **kw())
    before = await runs.GetRun(runs_pb2.GetRunRequest(run_id=run.id, brief=True), **kw())
    caller: Any = internal_metadata(SECRET, run.tenant_id) if as_engine else md()
    allowed = UNAUTHENTICATED if as_engine else frozenset({grpc.StatusCode.FAILED_PRECONDITION})
    assert await execute(engine, run.id, caller, allowed) is None
    after = await runs.GetRun(runs_pb2.GetRunRequest(run_id=run.id, brief=True), **kw())
    assert (after.status, after.last_seq) == (before.status, before.last_seq)

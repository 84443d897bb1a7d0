"""Random and boundary messages for the engine's calls to runs (Heartbeat, AppendEvents,
UpdateStep, FinishRun, PutStepItem, Record, RecordMany, GenerateSteps, SaveArtifacts,
ReleaseRun, ListRequeuedRuns) with the internal credentials the engine uses, against a run this
test claimed: unknown step and run statuses, unknown and terminal event types, random fencing
tokens, foreign step ids, values past their columns.

Each message starts well-formed and has some of its fields broken; the test knows which. Every
answer is a response or a clean refusal (never UNKNOWN / INTERNAL, never a hang), an
INVALID_ARGUMENT names one of the fields the test broke, and a refused write leaves the run's
rows exactly as they were (the run, its steps, items, events, artifacts and findings), while an
applied one leaves the run's events gap-free. Also: StartPipeline and the tenant calls no other
test sends (DeleteWorkflow, RerunWorkflow, AddWorkflowInsight, GetArtifact, ListFindings,
ListPersonas, ListProjects) with random values."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from nyxflow import events as ev
from nyxflow.auth import internal_metadata
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2, runs_pb2_grpc
from tests.fuzz.conftest import CALL_TIMEOUT_S, FUZZ, REFUSALS, answer, engine_md, kw
from tests.fuzz.test_runs_grpc import BOUNDARY_TEXT, IDS, INT32, INT64, PARAMS_JSON, PROVIDER, STEPS
from tests.support.direct import Direct, direct
from tests.support.inprocess import SECRET

T = TypeVar("T")

CLEAN = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20
)
DIRTY = st.one_of(st.text(max_size=60), BOUNDARY_TEXT)
STEP_STATUS = sorted(ev.STEP_STATUSES)
FINISH_STATUS = sorted(ev.TERMINAL_EVENT_FOR_STATUS)
UNKNOWN_STATUS = st.one_of(
    st.sampled_from(
        [
            *["", "done", "RUNNING", "Completed", "completed ", " pending", "paused"],
            *["requeued", "completed\x00", "s" * 20_000],
        ]
    ),
    st.text(max_size=20),
)
UNKNOWN_FINISH = st.one_of(
    st.sampled_from(
        ["", "running", "pending", "skipped", "done", "Failed", "cancelled\x00", "f" * 20_000]
    ),
    st.text(max_size=20),
)
EVENT_TYPES = [ev.STEP_STARTED, ev.STEP_DELTA, ev.FAN_OUT_PROGRESS, ev.PROVIDER_FALLBACK]
BAD_EVENT_TYPES = st.one_of(
    st.sampled_from([*sorted(ev.TERMINAL_EVENTS), ev.RUN_REQUEUED, "", "t" * 200, "a\x00"]),
    DIRTY,
)
BAD_TOKENS = st.one_of(INT64, st.sampled_from([-1, 0, 2, 3, 2**31 - 1, 2**31, 2**63 - 1]))
BAD_COUNTS = st.one_of(INT64, st.sampled_from([-1, 2**31, 2**63 - 1, -(2**63)]))


# --- drawing messages with some fields broken ---------------------------------------------------


@dataclass
class Breaker:
    """Draws each field either well-formed or from its bad strategy, and remembers the broken
    ones: a refusal's field must be one of them (or inside one)."""

    data: st.DataObject
    broken: set[str] = field(default_factory=set)

    def pick(self, name: str, good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> T:
        if self.data.draw(st.sampled_from([False, False, False, True]), label=f"break {name}"):
            self.broken.add(name)
            return self.data.draw(bad, label=name)
        return self.data.draw(good, label=name)

    def count(self, name: str, most: int) -> int:
        return self.data.draw(st.integers(0, most), label=f"{name} count")

    def names(self, field_: str) -> bool:
        return any(
            field_ == b or field_.startswith((f"{b}.", f"{b}[")) or b.startswith(f"{field_}[")
            for b in self.broken
        )


@dataclass(frozen=True)
class Claimed:
    """A run this test claimed, with the engine's credentials for its tenant."""

    run_id: str
    token: int
    tenant_id: str
    workflow_id: str
    step_ids: list[str]

    def engine(self) -> dict[str, Any]:
        return {"metadata": internal_metadata(SECRET, self.tenant_id), "timeout": CALL_TIMEOUT_S}


async def claimed(runs: runs_pb2_grpc.RunsStub) -> Claimed:
    request = runs_pb2.CreateWorkflowRequest(
        name="target",
        steps=[
            pb.StepSpec(name="a", kind="llm", prompt="hi", provider="local"),
            pb.StepSpec(name="b", kind="llm", prompt="{{ steps.a.output }}", provider="local"),
        ],
    )
    workflow: pb.Workflow = await runs.CreateWorkflow(request, **kw())
    run: pb.Run = await runs.CreateRun(runs_pb2.CreateRunRequest(workflow_id=workflow.id), **kw())
    claim = await runs.ClaimRun(
        runs_pb2.ClaimRunRequest(run_id=run.id, owner="fuzz", lease_ttl_s=60), **kw()
    )
    assert claim.won
    return Claimed(run.id, claim.token, run.tenant_id, workflow.id, [s.id for s in workflow.steps])


@pytest.fixture
async def db(runs_addr: str, database_url: str) -> AsyncIterator[Direct]:
    async with direct(database_url) as d:
        yield d


SNAPSHOT = {
    "runs": "SELECT * FROM runs WHERE id = :run",
    "steps": "SELECT * FROM steps WHERE workflow_id = :workflow ORDER BY position, id",
    "step_items": "SELECT * FROM step_items WHERE step_id IN "
    "(SELECT id FROM steps WHERE workflow_id = :workflow) ORDER BY step_id, item_index",
    "run_events": "SELECT * FROM run_events WHERE run_id = :run ORDER BY seq",
    "run_artifacts": "SELECT * FROM run_artifacts WHERE run_id = :run ORDER BY id",
    "findings": "SELECT * FROM findings WHERE run_id = :run ORDER BY id",
}


async def snapshot(db: Direct, target: Claimed) -> dict[str, list[tuple[Any, ...]]]:
    """The run's rows, straight from the database."""
    params = {"run": target.run_id, "workflow": target.workflow_id}
    async with db.sessions() as session:
        return {
            table: [tuple(row) for row in await session.execute(text(sql), params)]
            for table, sql in SNAPSHOT.items()
        }


async def seqs_gap_free(db: Direct, target: Claimed) -> None:
    params = {"run": target.run_id}
    async with db.sessions() as session:
        last = await session.scalar(text("SELECT last_seq FROM runs WHERE id = :run"), params)
        seqs = list(
            await session.scalars(
                text("SELECT seq FROM run_events WHERE run_id = :run ORDER BY seq"), params
            )
        )
    assert seqs == list(range(1, int(last) + 1)), (last, seqs)


async def outcome(
    call: Awaitable[T], breaker: Breaker, allowed: frozenset[grpc.StatusCode] = REFUSALS
) -> T | None:
    """The response, or None for a refusal with an allowed status; an INVALID_ARGUMENT names a
    field the test broke."""
    return await answer(call, allowed, breaker.names)


async def write_checked(
    db: Direct, target: Claimed, breaker: Breaker, call: Callable[[], Awaitable[T]]
) -> T | None:
    """The write's answer; refused, it changed none of the run's rows; applied, the run's
    events are still 1…last_seq."""
    before = await snapshot(db, target)
    answer = await outcome(call(), breaker)
    if answer is None:
        assert await snapshot(db, target) == before, "a refused write changed the run"
    else:
        await seqs_gap_free(db, target)
    return answer


# --- the parts of the engine's messages -----------------------------------------------------


def run_id(b: Breaker, target: Claimed, name: str = "run_id") -> str:
    return b.pick(name, st.just(target.run_id), IDS)


def token(b: Breaker, target: Claimed, name: str = "token") -> int:
    return b.pick(name, st.just(target.token), BAD_TOKENS)


def step_id(b: Breaker, target: Claimed, name: str) -> str:
    return b.pick(name, st.sampled_from(target.step_ids), IDS)


def events(b: Breaker, at: str = "events") -> list[pb.EventDraft]:
    drafts = []
    for i in range(b.count(at, 3)):
        type_ = b.pick(f"{at}[{i}].type", st.sampled_from(EVENT_TYPES), BAD_EVENT_TYPES)
        data = b.pick(
            f"{at}[{i}].data_json", st.sampled_from(["{}", '{"text": "hi"}']), PARAMS_JSON
        )
        drafts.append(pb.EventDraft(type=type_, data_json=data))
    return drafts


def change(b: Breaker, at: str) -> runs_pb2.StepChange:
    fields: dict[str, Any] = {
        "status": b.pick(f"{at}.status", st.sampled_from(STEP_STATUS), UNKNOWN_STATUS),
        "output": b.pick(f"{at}.output", CLEAN, DIRTY),
        "error": b.pick(f"{at}.error", CLEAN, DIRTY),
        "finish_reason": b.pick(f"{at}.finish_reason", st.sampled_from(["", "stop"]), DIRTY),
        "served_by": b.pick(f"{at}.served_by", st.sampled_from(["", "local"]), DIRTY),
        "input_tokens": b.pick(f"{at}.input_tokens", st.integers(0, 1000), BAD_COUNTS),
        "output_tokens": b.pick(f"{at}.output_tokens", st.integers(0, 1000), BAD_COUNTS),
        "truncated": b.data.draw(st.booleans()),
    }
    if b.data.draw(st.booleans(), label="item_count set"):
        fields["item_count"] = b.pick(f"{at}.item_count", st.integers(0, 5), INT32)
    if b.data.draw(st.booleans(), label="alternatives"):
        fields["alternatives"] = [
            pb.Alternative(
                index=0,
                output=b.pick(f"{at}.alternatives[0].output", CLEAN, DIRTY),
                input_tokens=b.pick(
                    f"{at}.alternatives[0].input_tokens", st.integers(0, 9), BAD_COUNTS
                ),
            )
        ]
    return runs_pb2.StepChange(**fields)


def item(b: Breaker, at: str) -> pb.StepItem:
    return pb.StepItem(
        index=b.pick(f"{at}.index", st.integers(0, 5), INT32),
        heading=b.pick(f"{at}.heading", CLEAN, DIRTY),
        output=b.pick(f"{at}.output", CLEAN, DIRTY),
        input_tokens=b.pick(f"{at}.input_tokens", st.integers(0, 9), BAD_COUNTS),
        output_tokens=b.pick(f"{at}.output_tokens", st.integers(0, 9), BAD_COUNTS),
        input_hash=b.pick(
            f"{at}.input_hash",
            st.sampled_from(["", "ab" * 32]),
            st.one_of(DIRTY, st.just("h" * 65)),
        ),
    )


def ops(b: Breaker, target: Claimed, at: str) -> list[runs_pb2.WriteOp]:
    written: list[runs_pb2.WriteOp] = []
    for i in range(b.count(f"{at}ops", 4)):
        kind = b.data.draw(st.sampled_from(["step", "item", "event", "none"]), label="op")
        where = f"{at}ops[{i}]"
        if kind == "step":
            write = runs_pb2.StepWrite(
                step_id=step_id(b, target, f"{where}.step.step_id"),
                change=change(b, f"{where}.step.change"),
            )
            written.append(runs_pb2.WriteOp(step=write))
        elif kind == "item":
            put = runs_pb2.ItemWrite(
                step_id=step_id(b, target, f"{where}.item.step_id"),
                item=item(b, f"{where}.item.item"),
            )
            written.append(runs_pb2.WriteOp(item=put))
        elif kind == "event":
            (draft,) = events_one(b, f"{where}.event")
            written.append(runs_pb2.WriteOp(event=draft))
        else:
            b.broken.add(where)  # an op that is none of the three
            written.append(runs_pb2.WriteOp())
    return written


def events_one(b: Breaker, at: str) -> list[pb.EventDraft]:
    type_ = b.pick(f"{at}.type", st.sampled_from(EVENT_TYPES), BAD_EVENT_TYPES)
    data = b.pick(f"{at}.data_json", st.just("{}"), PARAMS_JSON)
    return [pb.EventDraft(type=type_, data_json=data)]


def record_request(b: Breaker, target: Claimed, at: str = "") -> runs_pb2.RecordRequest:
    return runs_pb2.RecordRequest(
        run_id=run_id(b, target, f"{at}run_id"),
        token=token(b, target, f"{at}token"),
        ops=ops(b, target, at),
        finish_status=b.pick(
            f"{at}finish_status", st.sampled_from(["", *FINISH_STATUS]), UNKNOWN_FINISH
        ),
        finish_error=b.pick(f"{at}finish_error", CLEAN, DIRTY),
        batch_id=b.pick(f"{at}batch_id", st.sampled_from(["", "b" * 32]), DIRTY),
    )


# --- the engine's writes ------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
async def test_heartbeat(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    target, b = await claimed(runs), Breaker(data)
    ttl = b.pick(
        "lease_ttl_s",
        st.floats(1, 3600),
        st.one_of(st.floats(), st.sampled_from([0.0, -1.0, 3600.5, 1e300, float("nan")])),
    )
    request = runs_pb2.HeartbeatRequest(
        run_id=run_id(b, target), token=token(b, target), lease_ttl_s=ttl
    )
    await write_checked(db, target, b, lambda: runs.Heartbeat(request, **target.engine()))


@FUZZ
@given(data=st.data())
async def test_append_events(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    target, b = await claimed(runs), Breaker(data)
    request = runs_pb2.AppendEventsRequest(
        run_id=run_id(b, target), token=token(b, target), events=events(b)
    )
    written = await write_checked(
        db, target, b, lambda: runs.AppendEvents(request, **target.engine())
    )
    if written is not None:
        assert [e.type for e in written.events] == [e.type for e in request.events]


@FUZZ
@given(data=st.data())
async def test_update_step(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    target, b = await claimed(runs), Breaker(data)
    request = runs_pb2.UpdateStepRequest(
        run_id=run_id(b, target),
        token=token(b, target),
        step_id=step_id(b, target, "step_id"),
        change=change(b, "change"),
        events=events(b),
    )
    await write_checked(db, target, b, lambda: runs.UpdateStep(request, **target.engine()))


@FUZZ
@given(data=st.data())
async def test_finish_run(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    target, b = await claimed(runs), Breaker(data)
    request = runs_pb2.FinishRunRequest(
        run_id=run_id(b, target),
        token=token(b, target),
        status=b.pick("status", st.sampled_from(FINISH_STATUS), UNKNOWN_FINISH),
        error=b.pick("error", CLEAN, DIRTY),
        events=events(b),
    )
    finished = await write_checked(
        db, target, b, lambda: runs.FinishRun(request, **target.engine())
    )
    run = await runs.GetRun(runs_pb2.GetRunRequest(run_id=target.run_id, brief=True), **kw())
    if finished is None:
        assert run.status == ev.RUNNING
    else:
        assert run.status == request.status
        assert finished.events[-1].type == ev.TERMINAL_EVENT_FOR_STATUS[request.status]


@FUZZ
@given(data=st.data())
async def test_put_step_item(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    target, b = await claimed(runs), Breaker(data)
    request = runs_pb2.PutStepItemRequest(
        run_id=run_id(b, target),
        token=token(b, target),
        step_id=step_id(b, target, "step_id"),
        item=item(b, "item"),
        events=events(b),
    )
    await write_checked(db, target, b, lambda: runs.PutStepItem(request, **target.engine()))


@FUZZ
@given(data=st.data())
async def test_record(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    target, b = await claimed(runs), Breaker(data)
    request = record_request(b, target)
    await write_checked(db, target, b, lambda: runs.Record(request, **target.engine()))


@FUZZ
@given(data=st.data())
async def test_record_many(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    """Each batch is answered alone: a refused one by its own code and a field inside it; when
    all are refused, the run is as it was."""
    target, b = await claimed(runs), Breaker(data)
    batches = [record_request(b, target, f"batches[{i}].") for i in range(b.count("batches", 3))]
    request = runs_pb2.RecordManyRequest(batches=batches)
    before = await snapshot(db, target)
    answered = await outcome(runs.RecordMany(request, **target.engine()), b)
    assert answered is not None, "RecordMany answers each batch, never the call"
    assert len(answered.results) == len(batches)
    allowed = {code.value[0] for code in REFUSALS}
    for i, result in enumerate(answered.results):
        if result.code == 0:
            continue
        assert result.code in allowed, f"batches[{i}]: {result.code} {result.message}"
        if result.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
            assert result.field.startswith(f"batches[{i}]"), result.field
            assert b.names(result.field), f"{result.field!r} named, {sorted(b.broken)} broken"
    if all(result.code != 0 for result in answered.results):
        assert await snapshot(db, target) == before, "refused batches changed the run"
    else:
        await seqs_gap_free(db, target)


@FUZZ
@given(data=st.data())
async def test_generate_steps(
    runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject
) -> None:
    target, b = await claimed(runs), Breaker(data)
    good = st.integers(1, 3).map(
        lambda n: [pb.StepSpec(name=f"g{i}", kind="llm", prompt="hi") for i in range(n)]
    )
    request = runs_pb2.GenerateStepsRequest(
        run_id=run_id(b, target),
        token=token(b, target),
        after_step_id=step_id(b, target, "after_step_id"),
        steps=b.pick("steps", good, STEPS),
        events=events(b),
    )
    await write_checked(db, target, b, lambda: runs.GenerateSteps(request, **target.engine()))


@FUZZ
@given(data=st.data())
async def test_save_artifacts(
    runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject
) -> None:
    target, b = await claimed(runs), Breaker(data)
    artifacts = [
        pb.Artifact(
            name=b.pick(f"artifacts[{i}].name", st.just(f"patch{i}"), DIRTY),
            media_type=b.pick(f"artifacts[{i}].media_type", st.just("text/x-diff"), DIRTY),
            content=b.pick(f"artifacts[{i}].content", CLEAN, DIRTY),
        )
        for i in range(b.count("artifacts", 2))
    ]
    findings = [
        pb.Finding(
            file=b.pick(f"findings[{i}].file", CLEAN, DIRTY),
            line=b.pick(f"findings[{i}].line", st.integers(0, 99), INT32),
            severity=b.pick(f"findings[{i}].severity", st.sampled_from(["high", "info"]), DIRTY),
            category=b.pick(f"findings[{i}].category", st.just("bug"), DIRTY),
            message=b.pick(f"findings[{i}].message", CLEAN, DIRTY),
        )
        for i in range(b.count("findings", 2))
    ]
    request = runs_pb2.SaveArtifactsRequest(
        run_id=run_id(b, target),
        token=token(b, target),
        step_id=b.pick("step_id", st.sampled_from(["", *target.step_ids]), IDS),
        artifacts=artifacts,
        findings=findings,
    )
    await write_checked(db, target, b, lambda: runs.SaveArtifacts(request, **target.engine()))


@FUZZ
@given(data=st.data())
async def test_release_run(runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject) -> None:
    target, b = await claimed(runs), Breaker(data)
    request = runs_pb2.ReleaseRunRequest(
        run_id=run_id(b, target),
        token=token(b, target),
        reason=b.pick("reason", CLEAN, st.one_of(DIRTY, st.just("r" * 1001))),
    )
    released = await write_checked(
        db, target, b, lambda: runs.ReleaseRun(request, **target.engine())
    )
    if released is not None:
        assert released.status == ev.PAUSED  # the workflow's on_orphan is "fail"


@FUZZ
@given(data=st.data())
async def test_engine_writes_for_another_tenant(
    runs: runs_pb2_grpc.RunsStub, db: Direct, data: st.DataObject
) -> None:
    """The right run id and token, but the engine's credentials for another tenant (or for
    none): NOT_FOUND / UNAUTHENTICATED, and the run is untouched."""
    target, b = await claimed(runs), Breaker(data)
    header = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
    tenant = data.draw(st.one_of(st.just(""), st.uuids().map(str), header), label="tenant")
    metadata = internal_metadata(SECRET, tenant) if tenant else engine_md()
    other = {"metadata": metadata, "timeout": CALL_TIMEOUT_S}
    allowed = REFUSALS | {grpc.StatusCode.UNAUTHENTICATED}
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: runs.Heartbeat(
            runs_pb2.HeartbeatRequest(run_id=target.run_id, token=target.token, lease_ttl_s=60),
            **other,
        ),
        lambda: runs.FinishRun(
            runs_pb2.FinishRunRequest(run_id=target.run_id, token=target.token, status="failed"),
            **other,
        ),
        lambda: runs.Record(
            runs_pb2.RecordRequest(
                run_id=target.run_id, token=target.token, finish_status="cancelled"
            ),
            **other,
        ),
        lambda: runs.ReleaseRun(
            runs_pb2.ReleaseRunRequest(run_id=target.run_id, token=target.token), **other
        ),
    ]
    before = await snapshot(db, target)
    for call in calls:
        assert await outcome(call(), b, allowed) is None
    assert await snapshot(db, target) == before


@FUZZ
@given(data=st.data())
async def test_list_requeued_runs(runs: runs_pb2_grpc.RunsStub, data: st.DataObject) -> None:
    b = Breaker(data)
    limit = b.pick("limit", st.integers(0, 1_000), INT32)
    listed = await outcome(
        runs.ListRequeuedRuns(runs_pb2.ListRequeuedRunsRequest(limit=limit), **kw(engine_md())), b
    )
    assert (listed is not None) == (0 <= limit <= 1_000)


# --- pipelines and the tenant calls no other test sends ----------------------------------------


@FUZZ
@given(data=st.data())
async def test_start_pipeline(
    runs: runs_pb2_grpc.RunsStub, tmp_path: Path, data: st.DataObject
) -> None:
    unique = uuid.uuid4().hex
    project = await runs.CreateProject(runs_pb2.CreateProjectRequest(name=unique), **kw())
    repo = await runs.AddRepository(
        runs_pb2.AddRepositoryRequest(
            project_id=project.id, owner=unique, repo="r", path=str(tmp_path)
        ),
        **kw(),
    )
    b = Breaker(data)
    pipeline = b.pick(
        "pipeline", st.sampled_from(["code-analysis", "auto-fix", "refactor"]), UNKNOWN_STATUS
    )
    request = runs_pb2.StartPipelineRequest(
        repository_id=b.pick("repository_id", st.just(repo.id), IDS),
        pipeline=pipeline,
        goal=b.pick("goal", st.just("tidy up"), st.one_of(DIRTY, st.just("g" * 10_001))),
        test_command=b.pick("test_command", st.sampled_from(["", "true"]), DIRTY),
        max_files=b.pick("max_files", st.integers(0, 10_000), INT32),
        max_bytes=b.pick("max_bytes", st.integers(0, 5_000_000), INT32),
        providers=b.pick("providers", st.sampled_from([[], ["local"]]), st.lists(PROVIDER)),
        params_json=b.pick("params", st.sampled_from(["", "{}"]), PARAMS_JSON),
    )
    run = await outcome(runs.StartPipeline(request, **kw()), b)
    if run is not None:
        assert run.status == ev.PENDING
    elif not b.broken:
        # Well-formed: only a second pipeline while the first is active may be refused.
        listed = await runs.ListRuns(runs_pb2.ListRunsRequest(status=ev.PENDING), **kw())
        assert listed.runs, "a well-formed pipeline was refused with no run active"


@FUZZ
@given(data=st.data())
async def test_other_tenant_calls(runs: runs_pb2_grpc.RunsStub, data: st.DataObject) -> None:
    """Random ids and text; the real workflow's id for the calls it makes sense for."""
    b = Breaker(data)
    workflow = await runs.CreateWorkflow(
        runs_pb2.CreateWorkflowRequest(name="w", steps=[pb.StepSpec(name="a", kind="llm")]), **kw()
    )
    some_id = b.pick("workflow_id", st.just(workflow.id), IDS)
    insight = runs_pb2.AddWorkflowInsightRequest(
        workflow_id=some_id, text=b.pick("text", CLEAN.filter(str.strip), DIRTY)
    )
    await outcome(runs.AddWorkflowInsight(insight, **kw()), b)
    await outcome(runs.RerunWorkflow(runs_pb2.RerunWorkflowRequest(workflow_id=some_id), **kw()), b)
    run_id_ = data.draw(IDS, label="run_id")
    b.broken.add("run_id")
    artifact = runs_pb2.GetArtifactRequest(
        run_id=run_id_, name=b.pick("name", st.just("patch"), DIRTY)
    )
    assert await outcome(runs.GetArtifact(artifact, **kw()), b) is None
    assert (
        await outcome(runs.ListFindings(runs_pb2.ListFindingsRequest(run_id=run_id_), **kw()), b)
        is None
    )
    assert await outcome(runs.ListPersonas(runs_pb2.ListPersonasRequest(), **kw()), b) is not None
    assert await outcome(runs.ListProjects(runs_pb2.ListProjectsRequest(), **kw()), b) is not None
    deleted = await outcome(
        runs.DeleteWorkflow(runs_pb2.DeleteWorkflowRequest(workflow_id=some_id), **kw()), b
    )
    if deleted is not None:
        assert (
            await outcome(
                runs.GetWorkflow(runs_pb2.GetWorkflowRequest(workflow_id=workflow.id), **kw()), b
            )
            is None
        )

"""Random and boundary messages for the runs gRPC API, through the real embedded service on both
backends (PostgreSQL refuses more than SQLite: NUL, long varchars, negative LIMIT, int32 seqs):
every answer is a response or a clean refusal, never INTERNAL, never a hang."""

from __future__ import annotations

import json
import math
from typing import Any
from uuid import uuid4

import grpc
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from nyxflow import constants as kinds
from nyxflow import events as ev
from nyxflow.v1 import admin_pb2, admin_pb2_grpc, runs_pb2, runs_pb2_grpc
from nyxflow.v1 import common_pb2 as pb
from tests.fuzz.conftest import FUZZ, REFUSALS, admin_md, answer, engine_md, internal_md, kw
from tests.support.inprocess import ADMIN_KEY, API_KEY

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
BIG = "x" * 3_000_000  # a few MB, well under the 32 MB message limit
BOUNDARY_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "a" * 200, "a" * 201, "é" * 201, "😀" * 150, "\u202e", "\n\t", BIG]
)
TEXT = st.one_of(st.text(max_size=60), BOUNDARY_TEXT)
IDS = st.one_of(
    st.text(max_size=40),
    st.uuids().map(str),
    st.sampled_from(["", "\x00", "' OR 1=1 --", "%", "*", "a" * 10_000, "00000000-0000"]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
PARAMS_JSON = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v)),  # NaN and Infinity included
    st.dictionaries(st.text(max_size=5), JSON_VALUES).map(lambda v: json.dumps(v)),
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "{}",
            "[]",
            "null",
            '{"a": NaN}',
            '{"a": Infinity}',
            '{"a": -Infinity}',
            "{" * 10,
            '{"a":' * 100_000 + "1" + "}" * 100_000,  # deeper than json's recursion limit
            "[" * 100_000 + "]" * 100_000,
            '{"n": ' + "1" * 5000 + "}",  # more digits than int() converts
            '{"a": "\\ud800"}',  # a lone surrogate
            '{"a": "\\u0000"}',
            '{"a": 1e999}',
        ]
    ),
)
PROVIDER = st.one_of(
    st.sampled_from(
        [*kinds.PROVIDERS, "", "nope", "local:", ":model", "LOCAL", "local:" + "m" * 300]
    ),
    st.text(max_size=20),
)
KIND = st.one_of(st.sampled_from(sorted(kinds.STEP_KINDS)), st.text(max_size=20))


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": TEXT,
    "kind": KIND,
    "prompt": st.one_of(
        TEXT,
        st.sampled_from(
            ["{{ item }}", "{{ steps.s0.output }}", "{{ nope }}", "{{", "}}", "{{ steps..output }}"]
        ),
    ),
    "provider": PROVIDER,
    "model": TEXT,
    "params_json": PARAMS_JSON,
    "max_tokens": INT32,
    "persona": st.one_of(st.sampled_from(["Athena", "athena", "Nobody"]), TEXT),
    "alternatives": INT32,
    "auto_continue": INT32,
    "source": st.one_of(st.just("s0"), TEXT),
    "split": st.one_of(st.sampled_from(["headings", "lines", "json"]), TEXT),
    "concurrency": INT32,
    "generates": st.one_of(st.just("implementation_prompt"), TEXT),
    "reviews": st.lists(st.one_of(st.just("s0"), TEXT), max_size=3),
    "tool": st.one_of(st.sampled_from(["echo", "scan_repository"]), TEXT),
    "providers": st.lists(PROVIDER, max_size=10),
}
MUTATION = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: FIELDS[name].map(lambda value: (name, value))
)


def _step(position: int, mutations: list[tuple[str, Any]]) -> pb.StepSpec:
    fields: dict[str, Any] = {
        "name": f"s{position}",
        "kind": "llm",
        "prompt": "hi",
        "provider": "local",
    }
    fields.update(mutations)
    return pb.StepSpec(**fields)


# Well-formed steps with one to three fields replaced by random or boundary values, so the
# fuzzing reaches past the first check; and steps random in every field.
STEPS = st.one_of(
    st.lists(st.lists(MUTATION, min_size=1, max_size=3), max_size=4).map(
        lambda steps: [_step(i, m) for i, m in enumerate(steps)]
    ),
    st.lists(st.builds(pb.StepSpec, **FIELDS), max_size=3),
)


async def a_workflow(runs: runs_pb2_grpc.RunsStub) -> pb.Workflow:
    request = runs_pb2.CreateWorkflowRequest(
        name="target",
        steps=[pb.StepSpec(name="a", kind="llm", prompt="hi", provider="local")],
    )
    workflow: pb.Workflow = await runs.CreateWorkflow(request, **kw())
    return workflow


# --- CreateWorkflow ---------------------------------------------------------------------------


@FUZZ
@given(
    name=TEXT,
    steps=STEPS,
    default_providers=st.lists(PROVIDER, max_size=10),
    project_id=st.one_of(st.just(""), IDS),
    consistency_check=st.booleans(),
    on_orphan=st.one_of(st.sampled_from(["", "fail", "resume", "RESUME", "retry"]), TEXT),
)
@example(
    name="ok",
    steps=[_step(0, [("params_json", '{"a": NaN}')])],
    default_providers=[],
    project_id="",
    consistency_check=False,
    on_orphan="",
)
async def test_create_workflow_answers_cleanly(
    runs: runs_pb2_grpc.RunsStub,
    name: str,
    steps: list[pb.StepSpec],
    default_providers: list[str],
    project_id: str,
    consistency_check: bool,
    on_orphan: str,
) -> None:
    request = runs_pb2.CreateWorkflowRequest(
        name=name,
        steps=steps,
        default_providers=default_providers,
        project_id=project_id,
        consistency_check=consistency_check,
        on_orphan=on_orphan,
    )
    workflow = await answer(runs.CreateWorkflow(request, **kw()))
    if workflow is None:
        return
    assert workflow.on_orphan == (on_orphan or "fail")
    # What was accepted reads back, and its params are a JSON object any client can render.
    again: pb.Workflow = await runs.GetWorkflow(
        runs_pb2.GetWorkflowRequest(workflow_id=workflow.id), **kw()
    )
    assert [s.name for s in again.steps][: len(steps)] == [s.name.strip() for s in steps]
    for step in again.steps:
        params = json.loads(step.params_json or "{}", parse_constant=_no_constants)
        assert isinstance(params, dict)
        json.dumps(params, ensure_ascii=False, allow_nan=False).encode()  # as the gateway does


def _no_constants(name: str) -> float:
    raise AssertionError(f"stored params hold {name}, which strict JSON cannot carry")


@pytest.mark.parametrize(
    ("count", "ok"), [(kinds_count, kinds_count <= 500) for kinds_count in (500, 501, 2000)]
)
async def test_step_count_boundary(runs: runs_pb2_grpc.RunsStub, count: int, ok: bool) -> None:
    steps = [pb.StepSpec(name=f"s{i}", kind="llm", provider="local") for i in range(count)]
    request = runs_pb2.CreateWorkflowRequest(name="many", steps=steps)
    workflow = await answer(runs.CreateWorkflow(request, **kw()))
    assert (workflow is not None) == ok
    if workflow is not None:
        assert len(workflow.steps) == count


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (pb.StepSpec(name="", kind="llm"), "steps[0].name"),
        (pb.StepSpec(name="a", kind="nope"), "steps[0].kind"),
        (pb.StepSpec(name="a", kind="llm", max_tokens=-1), "steps[0].max_tokens"),
        (pb.StepSpec(name="a", kind="llm", alternatives=-3), "steps[0].alternatives"),
        (pb.StepSpec(name="a", kind="llm", auto_continue=-1), "steps[0].auto_continue"),
        (pb.StepSpec(name="a", kind="llm", provider="nope"), "steps[0].provider"),
        (pb.StepSpec(name="a", kind="llm", providers=["x:y"]), "steps[0].providers[0]"),
        (pb.StepSpec(name="a", kind="llm", params_json="[1]"), "steps[0].params"),
        (pb.StepSpec(name="a", kind="llm", params_json='{"a": NaN}'), "steps[0].params"),
        (pb.StepSpec(name="a", kind="llm", params_json="[" * 100_000), "steps[0].params"),
        (
            pb.StepSpec(name="a", kind="llm", params_json='{"a":' * 50_000 + "1" + "}" * 50_000),
            "steps[0].params",
        ),
        (pb.StepSpec(name="a", kind="llm", params_json="1" * 5000), "steps[0].params"),
        (
            pb.StepSpec(name="a", kind="llm", params_json='{"n": ' + "1" * 5000 + "}"),
            "steps[0].params",
        ),
        (pb.StepSpec(name="a", kind="llm", params_json='{"a": "\\ud800"}'), "steps[0].params"),
        (pb.StepSpec(name="a", kind="llm", model="m" * 201), "steps[0].model"),
        (pb.StepSpec(name="a", kind="llm", prompt="x\x00y"), "steps[0].prompt"),
        (pb.StepSpec(name="a", kind="fan_out", source="a"), "steps[0].source"),
        (pb.StepSpec(name="a", kind="tool"), "steps[0].tool"),
        (pb.StepSpec(name="a", kind="llm", tool="echo"), "steps[0].tool"),
        (pb.StepSpec(name="a", kind="llm", split="lines"), "steps[0].split"),
        (pb.StepSpec(name="a", kind="tool", tool="echo", model="m"), "steps[0].model"),
        (pb.StepSpec(name="a\nb", kind="llm"), "steps[0].name"),
        (pb.StepSpec(name="a", kind="llm", prompt="{{ nope }}"), "steps[0].prompt"),
    ],
)
async def test_bad_steps_name_their_field(
    runs: runs_pb2_grpc.RunsStub, spec: pb.StepSpec, field: str
) -> None:
    request = runs_pb2.CreateWorkflowRequest(name="bad", steps=[spec])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runs.CreateWorkflow(request, **kw())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    from nyxflow.errors import from_rpc_error

    assert from_rpc_error(raised.value).field == field


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "nul\x00", "line\u2028sep"])
async def test_a_persona_name_is_one_line(runs: runs_pb2_grpc.RunsStub, name: str) -> None:
    """A step names its persona in one line (`persona: Athena`): one named over two could be
    stored, listed and never chosen."""
    request = runs_pb2.PutPersonaRequest(persona=pb.Persona(name=name, system_prompt="Hi."))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runs.PutPersona(request, **kw())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    from nyxflow.errors import from_rpc_error

    assert from_rpc_error(raised.value).field == "persona.name"
    listed = await runs.ListPersonas(runs_pb2.ListPersonasRequest(), **kw())
    assert name.strip() not in [p.name for p in listed.personas]


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "nul\x00", "line\u2028sep"])
async def test_project_and_repository_names_are_one_line(
    runs: runs_pb2_grpc.RunsStub, name: str
) -> None:
    """A pipeline's workflow is named from its repository's owner and repo: a newline there
    made a workflow name that CreateWorkflow itself refuses."""
    from nyxflow.errors import from_rpc_error

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runs.CreateProject(runs_pb2.CreateProjectRequest(name=name), **kw())
    assert from_rpc_error(raised.value).field == "name", raised.value.details()
    listed = await runs.ListProjects(runs_pb2.ListProjectsRequest(), **kw())
    assert name.strip() not in [p.name for p in listed.projects]

    project = await runs.CreateProject(runs_pb2.CreateProjectRequest(name=f"p{uuid4()}"), **kw())
    for field in ("owner", "repo"):
        fields = {"owner": "acme", "repo": "shop", field: name}
        request = runs_pb2.AddRepositoryRequest(project_id=project.id, path="/tmp", **fields)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await runs.AddRepository(request, **kw())
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
        assert from_rpc_error(raised.value).field == field


# --- reads and operations with random ids ------------------------------------------------------


@FUZZ
@given(some_id=IDS, index=INT32, cascade=st.booleans())
async def test_random_ids(
    runs: runs_pb2_grpc.RunsStub, some_id: str, index: int, cascade: bool
) -> None:
    calls = [
        runs.GetWorkflow(runs_pb2.GetWorkflowRequest(workflow_id=some_id), **kw()),
        runs.GetRun(runs_pb2.GetRunRequest(run_id=some_id), **kw()),
        runs.RetryStep(runs_pb2.RetryStepRequest(step_id=some_id, cascade=cascade), **kw()),
        runs.SelectAlternative(
            runs_pb2.SelectAlternativeRequest(step_id=some_id, index=index), **kw()
        ),
        runs.CreateRun(runs_pb2.CreateRunRequest(workflow_id=some_id), **kw()),
        runs.PauseRun(runs_pb2.PauseRunRequest(run_id=some_id), **kw()),
        runs.CancelRun(runs_pb2.CancelRunRequest(run_id=some_id), **kw()),
        runs.ResumeWorkflow(runs_pb2.ResumeWorkflowRequest(workflow_id=some_id), **kw()),
        runs.DuplicateWorkflow(runs_pb2.DuplicateWorkflowRequest(workflow_id=some_id), **kw()),
        runs.GetProject(runs_pb2.GetProjectRequest(project_id=some_id), **kw()),
        runs.ListStepItems(
            runs_pb2.ListStepItemsRequest(run_id=some_id, step_id=some_id, from_index=index),
            **kw(),
        ),
    ]
    for call in calls:
        assert await answer(call) is None  # nothing has these ids


@FUZZ
@given(index=INT32, cascade=st.booleans())
async def test_operations_on_a_real_step(
    runs: runs_pb2_grpc.RunsStub, index: int, cascade: bool
) -> None:
    workflow = await a_workflow(runs)
    step_id = workflow.steps[0].id
    await answer(
        runs.SelectAlternative(
            runs_pb2.SelectAlternativeRequest(step_id=step_id, index=index), **kw()
        )
    )
    await answer(
        runs.RetryStep(runs_pb2.RetryStepRequest(step_id=step_id, cascade=cascade), **kw())
    )


@FUZZ
@given(step_id=st.one_of(st.just("real"), IDS), from_index=INT32, limit=INT32)
@example(step_id="real", from_index=-1, limit=0)
@example(step_id="real", from_index=2**31 - 1, limit=500)
@example(step_id="real", from_index=0, limit=501)
async def test_list_step_items(
    runs: runs_pb2_grpc.RunsStub, step_id: str, from_index: int, limit: int
) -> None:
    """A run's step items with random bounds: a page within them, or a refusal naming its
    field; a random step id is NOT_FOUND."""
    workflow = await a_workflow(runs)
    run: pb.Run = await runs.CreateRun(runs_pb2.CreateRunRequest(workflow_id=workflow.id), **kw())
    real = step_id == "real"
    request = runs_pb2.ListStepItemsRequest(
        run_id=run.id,
        step_id=workflow.steps[0].id if real else step_id,
        from_index=from_index,
        limit=limit,
    )
    page = await answer(runs.ListStepItems(request, **kw()))
    if real and from_index >= 0 and 0 <= limit <= 500:
        assert page is not None and list(page.items) == []
    else:
        assert page is None


EVENT_TYPES = st.lists(st.one_of(st.sampled_from(sorted(ev.EVENT_TYPES)), TEXT), max_size=4)


@FUZZ
@given(run_id=st.one_of(st.just("real"), IDS), after_seq=INT64, types=EVENT_TYPES, limit=INT32)
@example(run_id="real", after_seq=0, types=[], limit=0)
@example(run_id="real", after_seq=0, types=["run_started", "no_such"], limit=0)
@example(run_id="real", after_seq=-1, types=["run_started"], limit=0)
@example(run_id="real", after_seq=2**63 - 1, types=["run_started"], limit=500)
@example(run_id="real", after_seq=0, types=["run_started"], limit=501)
async def test_list_run_events(
    runs: runs_pb2_grpc.RunsStub, run_id: str, after_seq: int, types: list[str], limit: int
) -> None:
    """A run's events of some types with random bounds and types: a page within them, or a
    refusal naming its field; a random run id is NOT_FOUND."""
    workflow = await a_workflow(runs)
    run: pb.Run = await runs.CreateRun(runs_pb2.CreateRunRequest(workflow_id=workflow.id), **kw())
    real = run_id == "real"
    request = runs_pb2.ListRunEventsRequest(
        run_id=run.id if real else run_id, after_seq=after_seq, types=types, limit=limit
    )
    page = await answer(runs.ListRunEvents(request, **kw()))
    valid = types and set(types) <= ev.EVENT_TYPES and after_seq >= 0 and 0 <= limit <= 500
    if real and valid:
        assert page is not None and list(page.events) == []
        assert page.read_through_seq == max(min(after_seq, 2**31 - 1), page.last_seq)
    else:
        assert page is None


@FUZZ
@given(workflow_id=st.one_of(st.just(""), IDS), status=TEXT, limit=INT32)
@example(workflow_id="", status="", limit=-1)
@example(workflow_id="", status="", limit=-(2**31))
@example(workflow_id="", status="running", limit=2**31 - 1)
async def test_list_runs(
    runs: runs_pb2_grpc.RunsStub, workflow_id: str, status: str, limit: int
) -> None:
    listed = await answer(
        runs.ListRuns(
            runs_pb2.ListRunsRequest(workflow_id=workflow_id, status=status, limit=limit), **kw()
        )
    )
    if listed is not None:
        assert len(listed.runs) <= max(limit, 50)


@FUZZ
@given(after_seq=INT64)
@example(after_seq=-1)
@example(after_seq=2**63 - 1)
async def test_watch_run_ends(runs: runs_pb2_grpc.RunsStub, after_seq: int) -> None:
    """A finished run's stream ends whatever after_seq says; a negative one is refused."""
    workflow = await a_workflow(runs)
    run: pb.Run = await runs.CreateRun(runs_pb2.CreateRunRequest(workflow_id=workflow.id), **kw())
    await runs.CancelRun(runs_pb2.CancelRunRequest(run_id=run.id), **kw())

    async def drain() -> list[pb.RunEvent]:
        call = runs.WatchRun(runs_pb2.WatchRunRequest(run_id=run.id, after_seq=after_seq), **kw())
        return [event async for batch in call for event in batch.events]

    events = await answer(drain())
    if after_seq < 0:
        assert events is None
    else:
        assert events is not None
        assert all(e.seq > after_seq for e in events)


@FUZZ
@given(run_id=IDS, after_seq=INT64)
async def test_watch_random_run(runs: runs_pb2_grpc.RunsStub, run_id: str, after_seq: int) -> None:
    async def drain() -> list[pb.RunEvent]:
        call = runs.WatchRun(runs_pb2.WatchRunRequest(run_id=run_id, after_seq=after_seq), **kw())
        return [event async for batch in call for event in batch.events]

    assert await answer(drain()) is None


@FUZZ
@given(
    owner=TEXT,
    ttl=st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0])),
)
async def test_claim_run_lease(runs: runs_pb2_grpc.RunsStub, owner: str, ttl: float) -> None:
    """A tenant's key may claim its own run: a lease that never expires (inf, NaN, 1e300)
    would keep the run running forever after its engine died, so only 0 < TTL ≤ 1 h is taken."""
    workflow = await a_workflow(runs)
    run: pb.Run = await runs.CreateRun(runs_pb2.CreateRunRequest(workflow_id=workflow.id), **kw())
    request = runs_pb2.ClaimRunRequest(run_id=run.id, owner=owner, lease_ttl_s=ttl)
    claimed = await answer(runs.ClaimRun(request, **kw()))
    if not (math.isfinite(ttl) and 0 < ttl <= 3600):
        assert claimed is None


@FUZZ
@given(run_id=IDS, token=INT64, reason=TEXT, limit=INT32)
async def test_handover_calls(
    runs: runs_pb2_grpc.RunsStub, run_id: str, token: int, reason: str, limit: int
) -> None:
    """The engine's handover calls with random ids, tokens and limits: refused cleanly (a
    tenant's key is not the engine), or answered within their bounds."""
    release = runs_pb2.ReleaseRunRequest(run_id=run_id, token=token, reason=reason)
    as_tenant = REFUSALS | {grpc.StatusCode.UNAUTHENTICATED}
    assert await answer(runs.ReleaseRun(release, **kw()), as_tenant) is None  # not the engine
    engine = kw(engine_md())
    assert await answer(runs.ReleaseRun(release, **kw(internal_md()))) is None  # no such run
    listed = await answer(
        runs.ListRequeuedRuns(runs_pb2.ListRequeuedRunsRequest(limit=limit), **engine)
    )
    if not 0 <= limit <= 1_000:
        assert listed is None
    else:
        assert listed is not None and len(listed.runs) <= (limit or 10)


@FUZZ
@given(name=TEXT, role=TEXT, system_prompt=TEXT, project=TEXT, owner=TEXT, text=TEXT)
async def test_personas_projects_notes(
    runs: runs_pb2_grpc.RunsStub,
    name: str,
    role: str,
    system_prompt: str,
    project: str,
    owner: str,
    text: str,
) -> None:
    persona = pb.Persona(name=name, role=role, system_prompt=system_prompt)
    await answer(runs.PutPersona(runs_pb2.PutPersonaRequest(persona=persona), **kw()))
    created = await answer(runs.CreateProject(runs_pb2.CreateProjectRequest(name=project), **kw()))
    if created is None:
        return
    await answer(
        runs.AddRepository(
            runs_pb2.AddRepositoryRequest(project_id=created.id, owner=owner, repo=name, path=text),
            **kw(),
        )
    )
    await answer(
        runs.AddProjectNote(
            runs_pb2.AddProjectNoteRequest(project_id=created.id, text=text), **kw()
        )
    )


# --- Admin --------------------------------------------------------------------------------------


SLUGS = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,99}", fullmatch=True),
    st.text(max_size=120),
    st.sampled_from(["", "-a", "A", "a" * 100, "a" * 101, "a\n", "default", "ä", "a\x00"]),
)


@FUZZ
@given(slug=SLUGS, name=TEXT, providers=st.lists(PROVIDER, max_size=10))
async def test_create_tenant(
    admin: admin_pb2_grpc.AdminStub, slug: str, name: str, providers: list[str]
) -> None:
    request = admin_pb2.CreateTenantRequest(slug=slug, name=name, default_providers=providers)
    tenant = await answer(admin.CreateTenant(request, **kw(admin_md())))
    if tenant is not None:
        assert tenant.slug == slug


@FUZZ
@given(
    tenant=st.one_of(st.just("default"), IDS),
    name=TEXT,
    expires_at=st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -1.0, 1e300])),
    key_id=IDS,
    project_id=IDS,
    on_conflict=st.one_of(st.sampled_from(["", "fail", "replace_empty"]), TEXT),
    on_persona_conflict=st.one_of(st.sampled_from(["", "fail", "keep_target", "rename"]), TEXT),
)
async def test_admin_calls(
    admin: admin_pb2_grpc.AdminStub,
    tenant: str,
    name: str,
    expires_at: float,
    key_id: str,
    project_id: str,
    on_conflict: str,
    on_persona_conflict: str,
) -> None:
    a = kw(admin_md())
    await answer(
        admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(tenant=tenant, name=name, expires_at=expires_at), **a
        )
    )
    await answer(admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant=tenant), **a))
    await answer(admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=key_id), **a))
    await answer(
        admin.SetTenantProviders(
            admin_pb2.SetTenantProvidersRequest(tenant=tenant, default_providers=[name]), **a
        )
    )
    move = admin_pb2.MoveProjectRequest(
        project_id=project_id,
        to_tenant=tenant,
        dry_run=True,
        on_conflict=on_conflict,
        on_persona_conflict=on_persona_conflict,
    )
    await answer(admin.MoveProject(move, **a))


@FUZZ
@given(authorization=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
@example(authorization="Bearer test-key-not")
@example(authorization="Basic test-key")
@example(authorization="")
async def test_bad_credentials(
    runs: runs_pb2_grpc.RunsStub, admin: admin_pb2_grpc.AdminStub, authorization: str
) -> None:
    """Anything but a tenant's key (or the admin key) is refused, UNAUTHENTICATED only."""
    scheme, _, key = authorization.partition(" ")
    assume(not (scheme.lower() == "bearer" and key.strip() in (API_KEY, ADMIN_KEY)))
    unauthenticated = frozenset({grpc.StatusCode.UNAUTHENTICATED})
    metadata = (("authorization", authorization),)
    request = runs_pb2.ListWorkflowsRequest()
    assert await answer(runs.ListWorkflows(request, **kw(metadata)), unauthenticated) is None
    tenants = admin.ListTenants(admin_pb2.ListTenantsRequest(), **kw(metadata))
    assert await answer(tenants, unauthenticated) is None

"""Request size limits and the values the wire cannot carry: an oversize request is refused
clearly (RESOURCE_EXHAUSTED / 413, or INVALID_ARGUMENT / 400 naming the field), never a 500,
and nothing of it is stored.

What exists: gRPC messages up to 32 MB each way (`grpc_server.CHANNEL_OPTIONS`, also the
servers' `SERVER_OPTIONS`), and `POST /v1/workflows/import` reads at most `MAX_TEMPLATE_BYTES`
(1 MB). The gRPC tests run on both backends (PostgreSQL refuses NUL and long varchars itself)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from nyxflow.errors import from_rpc_error
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import admin_pb2, admin_pb2_grpc, runs_pb2, runs_pb2_grpc
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway.app import MAX_BODY_BYTES
from nyxflow_gateway.routes.workflows import MAX_TEMPLATE_BYTES
from tests.fuzz.conftest import CALL_TIMEOUT_S, admin_md, answer, kw
from tests.support.inprocess import API_KEY
from tests.support.processes import ProcessStack

MAX_MESSAGE = dict(CHANNEL_OPTIONS)["grpc.max_receive_message_length"]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MB = 1024 * 1024


def step(**fields: Any) -> pb.StepSpec:
    return pb.StepSpec(**{"name": "a", "kind": "llm", "provider": "local", **fields})


async def workflow_count(runs: runs_pb2_grpc.RunsStub) -> int:
    listed = await runs.ListWorkflows(runs_pb2.ListWorkflowsRequest(), **kw())
    return len(listed.workflows)


# --- gRPC ---------------------------------------------------------------------------------------


def test_the_limit_is_32_mb_both_ways() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.max_send_message_length"] == MAX_MESSAGE == 32 * MB


async def test_an_oversize_message_is_refused_by_the_client(runs: runs_pb2_grpc.RunsStub) -> None:
    before = await workflow_count(runs)
    request = runs_pb2.CreateWorkflowRequest(
        name="big", steps=[step(prompt="x" * (MAX_MESSAGE + 1))]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runs.CreateWorkflow(request, **kw())
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await workflow_count(runs) == before


async def test_an_oversize_message_is_refused_by_the_server(
    runs: runs_pb2_grpc.RunsStub, runs_addr: str
) -> None:
    """A client that allows itself more than the server takes gets RESOURCE_EXHAUSTED."""
    before = await workflow_count(runs)
    options = [("grpc.max_send_message_length", 64 * MB)]
    async with grpc.aio.insecure_channel(runs_addr, options=options) as channel:
        big = runs_pb2_grpc.RunsStub(channel)
        request = runs_pb2.CreateWorkflowRequest(
            name="big", steps=[step(prompt="x" * (MAX_MESSAGE + MB))]
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await big.CreateWorkflow(request, **kw())
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await workflow_count(runs) == before


async def test_a_few_mb_under_the_limit_is_taken(runs: runs_pb2_grpc.RunsStub) -> None:
    prompt = "é" * (3 * MB)
    created = await answer(
        runs.CreateWorkflow(
            runs_pb2.CreateWorkflowRequest(name="large", steps=[step(prompt=prompt)]), **kw()
        )
    )
    assert created is not None
    assert created.steps[0].prompt == prompt


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (runs_pb2.CreateWorkflowRequest(name="a\x00", steps=[step()]), "name"),
        (runs_pb2.CreateWorkflowRequest(name="a", steps=[step(prompt="\x00")]), "steps[0].prompt"),
        (runs_pb2.CreateWorkflowRequest(name="a", steps=[step(model="m" * 201)]), "steps[0].model"),
        (runs_pb2.CreateWorkflowRequest(name="n" * 201, steps=[step()]), "name"),
        (runs_pb2.GetRunRequest(run_id="\x00"), "run_id"),
        (runs_pb2.GetWorkflowRequest(workflow_id="a\x00b"), "workflow_id"),
        (runs_pb2.ListRunsRequest(limit=-1), "limit"),
        (runs_pb2.ListRunsRequest(status="\x00"), "status"),
        (runs_pb2.ListRunsRequest(status="done"), "status"),
        (
            runs_pb2.CreateWorkflowRequest(name="a", steps=[step(params_json='{"t": 1e400}')]),
            "steps[0].params",
        ),
        (runs_pb2.WatchRunRequest(run_id="r", after_seq=-1), "after_seq"),
        (
            runs_pb2.PutPersonaRequest(persona=pb.Persona(name="p" * 101, system_prompt="s")),
            "persona.name",
        ),
        (
            runs_pb2.PutPersonaRequest(
                persona=pb.Persona(name="p", role="r" * 201, system_prompt="s")
            ),
            "persona.role",
        ),
        (runs_pb2.ClaimRunRequest(run_id="r", owner="o" * 201, lease_ttl_s=1), "owner"),
        (runs_pb2.ClaimRunRequest(run_id="r", owner="o", lease_ttl_s=float("nan")), "lease_ttl_s"),
        (runs_pb2.ClaimRunRequest(run_id="r", owner="o", lease_ttl_s=float("inf")), "lease_ttl_s"),
        (runs_pb2.ClaimRunRequest(run_id="r", owner="o", lease_ttl_s=3601), "lease_ttl_s"),
        (runs_pb2.ClaimRunRequest(run_id="r", owner="o", lease_ttl_s=1e300), "lease_ttl_s"),
    ],
)
async def test_what_the_database_cannot_hold_is_refused_naming_the_field(
    channel: grpc.aio.Channel, request_: Any, field: str
) -> None:
    """Every backend answers the same: SQLite would store these, PostgreSQL would fail."""
    stub = runs_pb2_grpc.RunsStub(channel)
    method = {
        runs_pb2.CreateWorkflowRequest: stub.CreateWorkflow,
        runs_pb2.GetRunRequest: stub.GetRun,
        runs_pb2.GetWorkflowRequest: stub.GetWorkflow,
        runs_pb2.ListRunsRequest: stub.ListRuns,
        runs_pb2.WatchRunRequest: stub.WatchRun,
        runs_pb2.PutPersonaRequest: stub.PutPersona,
        runs_pb2.ClaimRunRequest: stub.ClaimRun,
    }[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        call = method(request_, **kw())
        if isinstance(request_, runs_pb2.WatchRunRequest):
            [event async for event in call]
        else:
            await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert from_rpc_error(raised.value).field == field


async def test_names_made_from_names_fit_their_column(
    runs: runs_pb2_grpc.RunsStub, tmp_path: Path
) -> None:
    """A copy's default name and a pipeline's workflow name are built from names that may
    each be 200 long: PostgreSQL refused them (INTERNAL), SQLite kept them too long."""
    source = await runs.CreateWorkflow(
        runs_pb2.CreateWorkflowRequest(name="n" * 200, steps=[step()]), **kw()
    )
    copy = await runs.DuplicateWorkflow(
        runs_pb2.DuplicateWorkflowRequest(workflow_id=source.id), **kw()
    )
    assert len(copy.name) == 200
    assert copy.name.endswith("… (copy)")
    assert copy.name.startswith("n" * 190)
    project = await runs.CreateProject(runs_pb2.CreateProjectRequest(name="p"), **kw())
    repo = await runs.AddRepository(
        runs_pb2.AddRepositoryRequest(
            project_id=project.id, owner="o" * 200, repo="r" * 200, path=str(tmp_path)
        ),
        **kw(),
    )
    run = await runs.StartPipeline(
        runs_pb2.StartPipelineRequest(repository_id=repo.id, pipeline="code-analysis"), **kw()
    )
    workflow = await runs.GetWorkflow(
        runs_pb2.GetWorkflowRequest(workflow_id=run.workflow_id), **kw()
    )
    assert len(workflow.name) == 200
    assert workflow.name.startswith("code-analysis: ooo")


async def test_admin_refuses_nul_and_endless_keys(admin: admin_pb2_grpc.AdminStub) -> None:
    cases = [
        (admin_pb2.CreateTenantRequest(slug="ok", name="a\x00"), "name"),
        (
            admin_pb2.CreateApiKeyRequest(tenant="default", name="k", expires_at=float("nan")),
            "expires_at",
        ),
        (
            admin_pb2.CreateApiKeyRequest(tenant="default", name="k", expires_at=float("inf")),
            "expires_at",
        ),
    ]
    for request, field in cases:
        call = (
            admin.CreateTenant(request, **kw(admin_md()))
            if isinstance(request, admin_pb2.CreateTenantRequest)
            else admin.CreateApiKey(request, **kw(admin_md()))
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert from_rpc_error(raised.value).field == field


async def test_watch_after_a_huge_seq_ends(runs: runs_pb2_grpc.RunsStub) -> None:
    """After any seq an int64 holds (the column is int32 on PostgreSQL): nothing, then the end."""
    request = runs_pb2.CreateWorkflowRequest(name="w", steps=[step()])
    workflow: pb.Workflow = await runs.CreateWorkflow(request, **kw())
    run: pb.Run = await runs.CreateRun(runs_pb2.CreateRunRequest(workflow_id=workflow.id), **kw())
    await runs.CancelRun(runs_pb2.CancelRunRequest(run_id=run.id), **kw())
    watch = runs.WatchRun(runs_pb2.WatchRunRequest(run_id=run.id, after_seq=2**63 - 1), **kw())
    assert [batch async for batch in watch] == []


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture
async def http(sqlite_stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sqlite_stack.base_url, headers=HEADERS, timeout=60
    ) as client:
        yield client


async def http_workflow_count(http: httpx.AsyncClient) -> int:
    listed = await http.get("/v1/workflows")
    assert listed.status_code == 200, listed.text
    return len(listed.json()["workflows"])


def template(prompt_bytes: int) -> str:
    return (
        f"name: big\nsteps:\n  - name: a\n    provider: local\n    prompt: {'x' * prompt_bytes}\n"
    )


async def test_an_oversize_template_is_refused_not_cut(http: httpx.AsyncClient) -> None:
    """Cut at the limit this template would still parse, with its prompt shortened: refused."""
    before = await http_workflow_count(http)
    body = template(MAX_TEMPLATE_BYTES + 1000)
    response = await http.post(
        "/v1/workflows/import", content=body, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["field"] == "template"
    assert await http_workflow_count(http) == before


async def test_a_template_at_the_limit_is_taken(http: httpx.AsyncClient) -> None:
    body = template(0)
    body = body.replace("prompt: ", "prompt: " + "x" * (MAX_TEMPLATE_BYTES - len(body)))
    assert len(body.encode()) == MAX_TEMPLATE_BYTES
    response = await http.post("/v1/workflows/import", content=body)
    assert response.status_code == 201, response.text


async def test_an_oversize_json_workflow_is_a_413_naming_the_body(
    http: httpx.AsyncClient,
) -> None:
    """Larger than a gRPC message: the gateway's client refuses to send it."""
    before = await http_workflow_count(http)
    steps = [{"name": "a", "provider": "local", "prompt": "x" * (MAX_MESSAGE + MB)}]
    response = await http.post("/v1/workflows", json={"name": "big", "steps": steps})
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["field"] == "body"
    assert await http_workflow_count(http) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "w", "steps": [{"name": "a", "max_tokens": 2**31}]}, "steps[0].max_tokens"),
        ({"name": "w", "steps": [{"name": "a", "params": {"a": "\ud800"}}]}, "steps[0].params"),
        ({"name": "w", "steps": [{"name": "a", "model": "m" * 300}]}, "steps[0].model"),
        ({"name": "w\x00", "steps": [{"name": "a"}]}, "name"),
        ({"name": "w", "steps": [{"name": "a"}] * 501}, "steps"),
        ({"name": "w", "steps": []}, "steps"),
        ({"steps": [{"name": "a"}]}, "name"),
        ([], "body"),
    ],
)
async def test_bad_workflow_bodies_are_400_naming_the_field(
    http: httpx.AsyncClient, body: Any, field: str
) -> None:
    before = await http_workflow_count(http)
    response = await http.post(
        "/v1/workflows", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["field"] == field
    assert await http_workflow_count(http) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"a": NaN}', "steps[0].params"),
        ('{"a": Infinity}', "steps[0].params"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "body"),
    ],
)
async def test_json_a_browser_cannot_send_back_is_refused(
    http: httpx.AsyncClient, body: str, field: str
) -> None:
    """Python's JSON reader takes NaN and Infinity; strict JSON (and the answer) cannot."""
    raw = '{"name": "w", "steps": [{"name": "a", "params": ' + body + "}]}"
    response = await http.post(
        "/v1/workflows", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["field"] == field


async def test_an_oversize_persona_is_a_400_naming_the_field(http: httpx.AsyncClient) -> None:
    body = {"role": "r", "system_prompt": "s" * (MB + 1)}
    response = await http.put("/v1/personas/Big", json=body)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["field"] == "system_prompt"


async def test_select_with_an_index_beyond_int32(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/steps/nope/select", json={"index": 2**40})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "index"


@pytest.mark.parametrize("path", ["/v1/runs/%00", "/v1/workflows/a%00b", "/v1/projects/%00"])
async def test_nul_in_a_path_id(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path, timeout=CALL_TIMEOUT_S)
    assert response.status_code in (400, 404), response.text
    if response.status_code == 400:
        assert response.json()["error"]["field"]


# --- HTTP: bodies refused before they are read ----------------------------------------------


async def raw_answer(stack: ProcessStack, head: str, body: bytes = b"") -> tuple[int, Any]:
    """Send `head` (and `body`, perhaps short of what the head declares) on a raw connection
    and read the answer: one that waits for the rest of the body times out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway_port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(10):
            status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", rest)
            assert length is not None, rest
            answer = await reader.readexactly(int(length.group(1)))
        return int(status_line.split()[1]), json.loads(answer)
    finally:
        writer.close()


def post_head(path: str, *extra: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", "Content-Type: application/json", *extra]
    return "\n".join(lines) + "\n"


async def test_a_body_declared_too_large_is_refused_unread(sqlite_stack: ProcessStack) -> None:
    """The declared length is enough: nothing of the body is sent, none is waited for."""
    for key in ([], [f"Authorization: Bearer {API_KEY}"]):
        head = post_head("/v1/projects", f"Content-Length: {MAX_BODY_BYTES + 1}", *key)
        status, answer = await raw_answer(sqlite_stack, head)
        assert status == 413, answer
        assert answer["error"]["code"] == "resource_exhausted"
        assert answer["error"]["field"] == "body"


@pytest.mark.parametrize(
    "key", ["", "Authorization: Bearer " + "k" * 600, "Authorization: Basic x"]
)
async def test_a_body_without_a_key_is_refused_before_it_is_read(
    sqlite_stack: ProcessStack, key: str
) -> None:
    head = post_head("/v1/projects", "Content-Length: 1000", *([key] if key else []))
    status, answer = await raw_answer(sqlite_stack, head, b'{"name":')  # the rest never comes
    assert status == 401, answer
    assert answer["error"]["code"] == "unauthenticated"


async def test_a_chunked_body_past_the_limit_is_refused_while_read(
    sqlite_stack: ProcessStack,
) -> None:
    """No length to check: reading stops at the limit; the body's end is never waited for."""
    chunk = b"a" * MB
    body = b'9\r\n{"name":"\r\n' + b"%x\r\n%s\r\n" % (len(chunk), chunk) * (MAX_BODY_BYTES // MB)
    head = post_head(
        "/v1/projects", "Transfer-Encoding: chunked", f"Authorization: Bearer {API_KEY}"
    )
    status, answer = await raw_answer(sqlite_stack, head, body)
    assert status == 413, answer
    assert answer["error"]["code"] == "resource_exhausted"
    assert answer["error"]["field"] == "body"


LONE = '"\\ud800"'  # JSON for a lone surrogate: a Python str, but no UTF-8 holds it


def workflow_json(step: str = "", top: str = "") -> str:
    return '{"name": "w", ' + top + '"steps": [{"name": "a"' + step + "}]}"


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        *[
            ("/v1/workflows", workflow_json(step=f', "{name}": {LONE}'), f"steps[0].{name}")
            for name in ("persona", "provider", "model", "source", "tool")
        ],
        ("/v1/workflows", workflow_json(step=', "prompt": "hi \\ud800"'), "steps[0].prompt"),
        ("/v1/workflows", workflow_json(step=f', "providers": [{LONE}]'), "steps[0].providers[0]"),
        ("/v1/workflows", workflow_json(step=f', "reviews": ["a", {LONE}]'), "steps[0].reviews[1]"),
        (
            "/v1/workflows",
            workflow_json(top=f'"default_providers": [{LONE}], '),
            "default_providers[0]",
        ),
        ("/v1/steps/nope/retry", f'{{"providers": [{LONE}]}}', "providers[0]"),
        (
            "/v1/repositories/nope/pipelines",
            f'{{"pipeline": "auto-fix", "providers": [{LONE}]}}',
            "providers[0]",
        ),
    ],
)
async def test_a_lone_surrogate_is_a_400_naming_the_field(
    http: httpx.AsyncClient, path: str, raw: str, field: str
) -> None:
    before = await http_workflow_count(http)
    response = await http.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["field"] == field
    assert await http_workflow_count(http) == before


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/v1/steps/nope/select", '{"index": true}', "index"),
        ("/v1/steps/nope/select", '{"index": 1.0}', "index"),
        ("/v1/steps/nope/retry", '{"cascade": "yes"}', "cascade"),
        ("/v1/steps/nope/retry", '{"max_tokens": "100"}', "max_tokens"),
        ("/v1/workflows", workflow_json(top='"consistency_check": "no", '), "consistency_check"),
        ("/v1/workflows", workflow_json(step=', "max_tokens": true'), "steps[0].max_tokens"),
        ("/v1/workflows", workflow_json(step=', "alternatives": "2"'), "steps[0].alternatives"),
        (
            "/v1/repositories/nope/pipelines",
            '{"pipeline": "auto-fix", "max_files": false}',
            "max_files",
        ),
    ],
)
async def test_a_flag_or_count_of_another_type_is_a_400_naming_the_field(
    http: httpx.AsyncClient, path: str, raw: str, field: str
) -> None:
    """`"cascade": "yes"` was read as true, `"consistency_check": "no"` as false and
    `"index": true` as 1: what the client meant was guessed, not refused."""
    before = await http_workflow_count(http)
    response = await http.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["field"] == field
    assert await http_workflow_count(http) == before


async def test_a_template_with_a_lone_surrogate_is_a_400_naming_the_field(
    http: httpx.AsyncClient,
) -> None:
    """YAML's double-quoted "\\ud800" too, as pasted into the page."""
    text = 'name: x\nsteps:\n- name: a\n  prompt: "hi \\ud800"\n'
    response = await http.post(
        "/v1/workflows/import", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["field"] == "steps[0].prompt"

"""The gateway over real HTTP (uvicorn) in front of fake Runs/Engine gRPC servers on loopback.

The fakes answer with canned protos and scripted streams, and record what they were asked
and whether their stream was cancelled, so each test can see exactly what the gateway did
upstream for what a browser sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
import uvicorn

from nyxflow import events as ev
from nyxflow.auth import caller_from_metadata
from nyxflow.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from nyxflow.grpc_server import ErrorInterceptor
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import engine_pb2, engine_pb2_grpc, runs_pb2, runs_pb2_grpc
from nyxflow_gateway.app import create_app
from nyxflow_gateway.http_protocol import Protocol
from nyxflow_gateway.settings import GatewaySettings
from tests.support.eventually import eventually
from tests.support.sse_client import Frame, frames
from tests.support.sse_client import read_events as read_all

KEY = "good-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RUN = "run-1"
WORKFLOW = "wf-1"
MISSING = "00000000-0000-0000-0000-000000000000"


# --- fakes ------------------------------------------------------------------------------


def event(seq: int, type_: str, run_id: str = RUN, **data: Any) -> pb.RunEvent:
    return pb.RunEvent(
        run_id=run_id, seq=seq, type=type_, data_json=json.dumps(data), created_at=1_700_000_000
    )


def script(run_id: str = RUN, steps: int = 2) -> list[pb.RunEvent]:
    """run_started, then started/completed per step, then run_completed: seq 1 … 2n+2."""
    out = [event(1, ev.RUN_STARTED, run_id)]
    for i in range(steps):
        out.append(event(len(out) + 1, ev.STEP_STARTED, run_id, step_id=f"s{i}", name=f"s{i}"))
        out.append(
            event(len(out) + 1, ev.STEP_COMPLETED, run_id, step_id=f"s{i}", output=f"out\n{i}")
        )
    out.append(event(len(out) + 1, ev.RUN_COMPLETED, run_id))
    return out


def check_key(context: grpc.aio.ServicerContext) -> None:
    caller = caller_from_metadata(context.invocation_metadata() or (), "unused-secret")
    if caller.api_key != KEY:
        raise Unauthenticated("unknown API key")


@dataclass
class Stream:
    """How one upstream stream behaves: yield these, then end, hang, or fail."""

    events: list[pb.RunEvent]
    then: str = "end"  # end | hang | unavailable
    pace_s: float = 0.0  # a pause after each message, as a live run would have
    per_message: int = 1  # events per RunEventBatch
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def play(self, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RunEventBatch]:
        try:
            for start in range(0, len(self.events), self.per_message):
                yield pb.RunEventBatch(events=self.events[start : start + self.per_message])
                if self.pace_s:
                    await asyncio.sleep(self.pace_s)
            if self.then == "hang":
                await asyncio.Event().wait()
            if self.then == "unavailable":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@dataclass
class World:
    """What the fake services know, and what they were asked."""

    runs: dict[str, pb.Run] = field(default_factory=dict)
    history: dict[str, list[pb.RunEvent]] = field(default_factory=dict)
    # Scripted streams, used in order; past the end, WatchRun replays `history` and ends.
    watches: list[Stream] = field(default_factory=list)
    executes: list[Stream | Exception] = field(default_factory=list)
    watch_calls: list[tuple[str, int]] = field(default_factory=list)
    execute_calls: list[str] = field(default_factory=list)
    created: list[runs_pb2.CreateWorkflowRequest] = field(default_factory=list)
    active_run: bool = False
    cancel_calls: int = 0

    def add_run(self, status: str, run_id: str = RUN) -> pb.Run:
        step = pb.Step(id="s0", order=0, name="s0", kind="llm", status="pending")
        run = pb.Run(
            id=run_id, workflow_id=WORKFLOW, status=status, created_at=1_700_000_000, steps=[step]
        )
        self.runs[run_id] = run
        self.history[run_id] = script(run_id)
        if status != ev.PENDING:  # as runs answers: what it has stored so far
            run.last_seq = len(self.history[run_id])
        return run


def workflow_pb(request: runs_pb2.CreateWorkflowRequest | None = None) -> pb.Workflow:
    specs = list(request.steps) if request is not None else [pb.StepSpec(name="a", kind="llm")]
    steps = [
        pb.Step(
            id=f"step-{i}",
            order=i,
            name=s.name,
            kind=s.kind,
            prompt=s.prompt,
            provider=s.provider,
            model=s.model,
            params_json=s.params_json,
            max_tokens=s.max_tokens,
            status="pending",
            spec=s,
        )
        for i, s in enumerate(specs)
    ]
    name = request.name if request is not None else "demo"
    return pb.Workflow(
        id=WORKFLOW, name=name, steps=steps, created_at=1_700_000_000.5, status="idle"
    )


class FakeRuns(runs_pb2_grpc.RunsServicer):
    def __init__(self, world: World) -> None:
        self.world = world

    async def CreateWorkflow(
        self, request: runs_pb2.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.Workflow:
        check_key(context)
        self.world.created.append(request)
        if any(s.kind == "fan_out" and not s.source for s in request.steps):
            raise InvalidArgument("a fan_out step needs a source", field="steps[0].source")
        return workflow_pb(request)

    async def ListWorkflows(
        self, request: runs_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.ListWorkflowsResponse:
        check_key(context)
        return runs_pb2.ListWorkflowsResponse(workflows=[workflow_pb()])

    async def ListPersonas(
        self, request: runs_pb2.ListPersonasRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.ListPersonasResponse:
        check_key(context)
        return runs_pb2.ListPersonasResponse()

    async def GetWorkflow(
        self, request: runs_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.Workflow:
        check_key(context)
        if request.workflow_id != WORKFLOW:
            raise NotFound("workflow not found")
        return workflow_pb()

    async def CreateRun(
        self, request: runs_pb2.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.Run:
        check_key(context)
        if self.world.active_run:
            raise FailedPrecondition("the workflow already has an active run")
        self.world.active_run = True
        return self.world.add_run(ev.PENDING)

    async def GetRun(
        self, request: runs_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.Run:
        check_key(context)
        if request.run_id not in self.world.runs:
            raise NotFound("run not found")
        return self.world.runs[request.run_id]

    async def CancelRun(
        self, request: runs_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.Run:
        self.world.cancel_calls += 1  # the gateway must never do this on its own
        return self.world.runs[request.run_id]

    async def WatchRun(
        self, request: runs_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEventBatch]:
        check_key(context)
        self.world.watch_calls.append((request.run_id, request.after_seq))
        if self.world.watches:
            stream = self.world.watches.pop(0)
        else:
            history = self.world.history.get(request.run_id, [])
            stream = Stream([e for e in history if e.seq > request.after_seq])
        async for item in stream.play(context):
            yield item


class FakeEngine(engine_pb2_grpc.EngineServicer):
    def __init__(self, world: World) -> None:
        self.world = world

    async def Execute(
        self, request: engine_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEventBatch]:
        check_key(context)
        self.world.execute_calls.append(request.run_id)
        planned = self.world.executes.pop(0) if self.world.executes else None
        if isinstance(planned, Exception):
            raise planned
        stream = planned or Stream(self.world.history[request.run_id])
        async for item in stream.play(context):
            yield item


# --- harness ----------------------------------------------------------------------------


@dataclass
class Gateway:
    http: httpx.AsyncClient
    world: World
    settings: GatewaySettings
    base_url: str

    async def upstreams(self) -> int:
        response = await self.http.get("/v1/debug/streams", headers=AUTH)
        assert response.status_code == 200, response.text
        return int(response.json()["upstream_streams"])


@contextlib.asynccontextmanager
async def grpc_server(servicer: Any, add: Any) -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@contextlib.contextmanager
def listening_socket() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def serve_gateway(settings: GatewaySettings, protocol: Any = Protocol) -> AsyncIterator[str]:
    """The real app under uvicorn in this event loop, on a socket already bound to port 0."""
    with listening_socket() as sock:
        config = uvicorn.Config(
            create_app(settings),
            log_config=None,
            lifespan="on",
            ws="none",
            http=protocol,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), "the gateway did not start"
            await asyncio.sleep(0.01)
        host, port = sock.getsockname()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 5)


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


# The gateway's own server writes SSE frames straight to the connection; under any other
# server the stream goes through ASGI `send`. The stream's tests run on both.
BOTH_SERVERS = pytest.mark.parametrize("protocol", [Protocol, "h11"], ids=["direct", "asgi"])


@pytest.fixture
def protocol() -> Any:
    return Protocol  # as the service runs


@pytest.fixture
async def gateway(overrides: dict[str, Any], protocol: Any) -> AsyncIterator[Gateway]:
    world = World()
    runs = FakeRuns(world)  # type: ignore[abstract]  # only what the gateway calls
    async with (
        grpc_server(runs, runs_pb2_grpc.add_RunsServicer_to_server) as runs_addr,
        grpc_server(FakeEngine(world), engine_pb2_grpc.add_EngineServicer_to_server) as engine,
    ):
        settings = GatewaySettings(
            runs_addr=runs_addr, engine_addr=engine, rpc_timeout_s=5.0, **overrides
        )
        async with (
            serve_gateway(settings, protocol) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=5) as http,
        ):
            yield Gateway(http, world, settings, base_url)


async def read_events(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[Frame]:
    """Every event frame until the gateway ends the stream, which it must do promptly."""
    return await asyncio.wait_for(read_all(http, url, headers), 5)


def events_url(run_id: str = RUN) -> str:
    return f"/v1/runs/{run_id}/events"


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert "Traceback" not in response.text
    if field is not None:
        assert error["field"] == field, error


def assert_relayed(received: list[Frame], expected: list[pb.RunEvent]) -> None:
    assert [(f.seq, f.event) for f in received] == [(e.seq, e.type) for e in expected]
    for frame, original in zip(received, expected, strict=True):
        data = frame.json
        assert data["seq"] == original.seq and data["type"] == original.type
        assert data["run_id"] == original.run_id
        for key, value in json.loads(original.data_json).items():
            assert data[key] == value  # the event's own data, decoded, multi-line intact


# --- the JSON API -----------------------------------------------------------------------


async def test_health_and_page_need_no_key(gateway: Gateway) -> None:
    health = await gateway.http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    page = await gateway.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in page.text
    scripts = {
        name: (await gateway.http.get(f"/static/{name}")).text
        for name in ("app.js", "api.js", "live.js", "markdown.js", "style.css")
    }
    assert "new EventSource" in scripts["live.js"] and "sessionStorage" in scripts["api.js"]
    for text in [page.text, *scripts.values()]:
        assert "//cdn" not in text and "fonts.googleapis" not in text  # no external network


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic Z29vZDprZXk="}, {"Authorization": "Bearer"}],
    ids=["none", "basic", "empty"],
)
async def test_v1_needs_a_bearer_key(gateway: Gateway, headers: dict[str, str]) -> None:
    for path in ("/v1/workflows", f"/v1/runs/{RUN}", events_url(), "/v1/debug/streams"):
        assert_error(await gateway.http.get(path, headers=headers), 401)


async def test_a_key_runs_refuses_is_401(gateway: Gateway) -> None:
    bad = {"Authorization": "Bearer wrong"}
    assert_error(await gateway.http.get("/v1/workflows", headers=bad), 401)
    assert_error(await gateway.http.get("/v1/debug/streams", headers=bad), 401)
    gateway.world.add_run(ev.PENDING)
    assert_error(await gateway.http.get(events_url(), headers=bad), 401)
    assert gateway.world.execute_calls == [] and gateway.world.watch_calls == []


BAD_KEYS = ["%C3%A9", "%01", "a%0Ab", "%7F", "x" * 20000]


@pytest.mark.parametrize("token", BAD_KEYS, ids=["non-ascii", "control", "newline", "del", "20kb"])
async def test_a_key_grpc_cannot_carry_is_401_not_500(gateway: Gateway, token: str) -> None:
    """gRPC refuses such metadata in the client, before any call: it was a 500."""
    gateway.world.add_run(ev.PENDING)
    response = await gateway.http.get(f"{events_url()}?access_token={token}")
    assert_error(response, 401)
    assert "malformed" in response.text and "metadata" not in response.text
    assert gateway.world.execute_calls == [] and gateway.world.watch_calls == []


@pytest.mark.parametrize("value", [b"Bearer \xe9", b"Bearer " + b"x" * 20000])
async def test_a_bearer_header_grpc_cannot_carry_is_401_not_500(
    gateway: Gateway, value: bytes
) -> None:
    for path in ("/v1/workflows", events_url()):
        assert_error(await gateway.http.get(path, headers={b"Authorization": value}), 401)


async def test_create_workflow_builds_step_specs_and_returns_201(gateway: Gateway) -> None:
    body = {
        "name": "demo",
        "steps": [
            {
                "name": "a",
                "kind": "llm",
                "prompt": "say hi",
                "provider": "local",
                "model": "m",
                "params": {"tokens": 3, "nested": {"x": [1, 2]}},
                "max_tokens": 64,
            }
        ],
    }
    response = await gateway.http.post("/v1/workflows", json=body, headers=AUTH)
    assert response.status_code == 201, response.text

    (sent,) = gateway.world.created
    spec = sent.steps[0]
    assert (sent.name, spec.name, spec.kind, spec.prompt) == ("demo", "a", "llm", "say hi")
    assert (spec.provider, spec.model, spec.max_tokens) == ("local", "m", 64)
    assert json.loads(spec.params_json) == {"tokens": 3, "nested": {"x": [1, 2]}}
    workflow = response.json()
    assert workflow["id"] == WORKFLOW and workflow["status"] == "idle"
    assert workflow["created_at"] == "2023-11-14T22:13:20.500000+00:00"
    assert workflow["updated_at"] is None  # 0 on the wire is "not set"
    (step,) = workflow["steps"]
    assert step["id"] == "step-0" and step["order"] == 0
    assert step["params"] == {"tokens": 3, "nested": {"x": [1, 2]}}


async def test_invalid_bodies_are_400_naming_the_field(gateway: Gateway) -> None:
    async def post(body: Any) -> httpx.Response:
        return await gateway.http.post("/v1/workflows", json=body, headers=AUTH)

    assert_error(await post({"name": "x", "steps": [{"name": "a", "kind": "nope"}]}), 400,
                 "steps[0].kind")  # fmt: skip
    assert_error(await post({"steps": [{"name": "a"}]}), 400, "name")
    # Refused by runs, not by the gateway: the field survives the gRPC hop.
    assert_error(await post({"name": "x", "steps": [{"name": "a", "kind": "fan_out"}]}), 400,
                 "steps[0].source")  # fmt: skip
    broken = await gateway.http.post(
        "/v1/workflows",
        content=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_error(broken, 400)


async def test_list_and_get_workflows(gateway: Gateway) -> None:
    listed = await gateway.http.get("/v1/workflows", headers=AUTH)
    assert listed.status_code == 200
    assert [w["id"] for w in listed.json()["workflows"]] == [WORKFLOW]
    one = await gateway.http.get(f"/v1/workflows/{WORKFLOW}", headers=AUTH)
    assert one.status_code == 200 and one.json()["name"] == "demo"
    assert_error(await gateway.http.get(f"/v1/workflows/{MISSING}", headers=AUTH), 404)


async def test_start_a_run_then_409_while_it_is_active(gateway: Gateway) -> None:
    first = await gateway.http.post(f"/v1/workflows/{WORKFLOW}/runs", headers=AUTH)
    assert first.status_code == 201, first.text
    assert first.json()["id"] == RUN and first.json()["status"] == "pending"
    assert_error(await gateway.http.post(f"/v1/workflows/{WORKFLOW}/runs", headers=AUTH), 409)


async def test_get_run_includes_its_steps(gateway: Gateway) -> None:
    gateway.world.add_run(ev.RUNNING)
    response = await gateway.http.get(f"/v1/runs/{RUN}", headers=AUTH)
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "running" and run["workflow_id"] == WORKFLOW
    assert [s["id"] for s in run["steps"]] == ["s0"]
    assert run["started_at"] is None and run["error"] is None
    assert_error(await gateway.http.get(f"/v1/runs/{MISSING}", headers=AUTH), 404)


# --- the event stream: errors before any stream -------------------------------------------


async def test_unknown_run_is_404_json_and_opens_nothing(gateway: Gateway) -> None:
    assert_error(await gateway.http.get(events_url(MISSING), headers=AUTH), 404)
    assert gateway.world.execute_calls == [] and gateway.world.watch_calls == []


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "0x10", "7x", "٣"])
async def test_malformed_last_event_id_is_400(gateway: Gateway, value: str) -> None:
    gateway.world.add_run(ev.PENDING)
    if value.isascii():  # HTTP headers are ASCII; a query string can carry any digit
        header = await gateway.http.get(events_url(), headers={**AUTH, "Last-Event-ID": value})
        assert_error(header, 400)
    query = await gateway.http.get(events_url(), params={"last_event_id": value}, headers=AUTH)
    assert_error(query, 400)
    assert gateway.world.execute_calls == [] and gateway.world.watch_calls == []


# --- the event stream: relaying ---------------------------------------------------------


@BOTH_SERVERS
async def test_pending_run_is_started_through_execute_and_relayed(gateway: Gateway) -> None:
    world = gateway.world
    world.add_run(ev.PENDING)

    async with gateway.http.stream("GET", events_url(), headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        received = [f async for f in bounded_frames(response)]

    assert received[0].retry == 3000 and received[0].event is None
    assert_relayed([f for f in received if f.event is not None], world.history[RUN])
    assert world.execute_calls == [RUN] and world.watch_calls == []
    assert world.cancel_calls == 0


@pytest.mark.parametrize("status", [ev.PENDING, ev.RUNNING])
async def test_stream_ends_after_the_terminal_event_whatever_follows(
    gateway: Gateway, status: str
) -> None:
    world = gateway.world
    world.add_run(status)
    stream = Stream([*world.history[RUN], event(99, ev.STEP_DELTA)], then="hang")
    if status == ev.PENDING:
        world.executes = [stream]
    else:
        world.watches = [stream]

    received = await read_events(gateway.http, events_url(), AUTH)  # would hang otherwise

    assert_relayed(received, world.history[RUN])
    await asyncio.wait_for(stream.cancelled.wait(), 10)  # and the upstream is let go


async def test_a_start_lost_to_another_falls_back_to_watch_from_the_beginning(
    gateway: Gateway,
) -> None:
    world = gateway.world
    world.add_run(ev.PENDING)
    world.executes = [FailedPrecondition("another connection won the claim")]

    received = await read_events(gateway.http, events_url(), AUTH)

    assert_relayed(received, world.history[RUN])
    assert world.execute_calls == [RUN] and world.watch_calls == [(RUN, 0)]


@pytest.mark.parametrize("per_message", [1, 3])
async def test_a_gap_in_the_engine_stream_is_filled_from_the_stored_stream(
    gateway: Gateway, per_message: int
) -> None:
    world = gateway.world
    world.add_run(ev.PENDING)
    history = world.history[RUN]
    world.executes = [Stream([*history[:2], *history[4:]], per_message=per_message)]

    received = await read_events(gateway.http, events_url(), AUTH)

    assert_relayed(received, history)  # 3 and 4 in their place
    assert world.watch_calls == [(RUN, 2)]


async def test_a_gap_the_stored_stream_cannot_fill_yet_is_read_again_never_skipped(
    gateway: Gateway,
) -> None:
    """runs away as the gap is filled: the cursor moved past it, and the gap's events were
    lost for every browser of the run."""
    world = gateway.world
    world.add_run(ev.RUNNING)
    history = world.history[RUN]
    world.watches = [
        Stream([*history[:2], *history[4:]], then="hang"),  # 3 and 4 never come live
        Stream([], then="unavailable"),  # the fill
    ]

    received = await read_events(gateway.http, events_url(), AUTH)

    assert_relayed(received, history)
    assert world.watch_calls == [(RUN, 0), (RUN, 2), (RUN, 2)]


async def test_an_engine_away_before_the_start_is_tried_again_while_the_run_is_pending(
    gateway: Gateway,
) -> None:
    world = gateway.world
    world.add_run(ev.PENDING)
    world.executes = [Unavailable("engine away"), Unavailable("engine away")]

    received = await read_events(gateway.http, events_url(), AUTH)

    assert_relayed(received, world.history[RUN])  # the third start ran it
    assert world.execute_calls == [RUN] * 3 and world.watch_calls == []


async def test_an_engine_away_then_a_run_started_elsewhere_is_followed(
    gateway: Gateway,
) -> None:
    world = gateway.world
    run = world.add_run(ev.PENDING)
    world.executes = [Unavailable("engine away")]

    reading = asyncio.create_task(read_events(gateway.http, events_url(), AUTH))

    async def calls() -> list[str]:
        return world.execute_calls

    await eventually(calls, lambda c: c == [RUN], interval_s=0.01, what="the first start")
    run.status = ev.RUNNING  # another gateway's start won meanwhile
    received = await asyncio.wait_for(reading, 10)

    assert_relayed(received, world.history[RUN])
    assert world.execute_calls == [RUN] and world.watch_calls == [(RUN, 0)]


@BOTH_SERVERS
@pytest.mark.parametrize("per_message", [1, 3])
async def test_engine_lost_mid_run_resumes_from_watch_without_duplicates(
    gateway: Gateway, per_message: int
) -> None:
    world = gateway.world
    world.add_run(ev.PENDING)
    history = world.history[RUN]
    world.executes = [Stream(history[:3], then="unavailable", per_message=per_message)]
    # A replay that overlaps what was already sent (the gateway skips seq <= last sent), in
    # batches that straddle it, with an event after the terminal one in the terminal's
    # batch: it must not reach the browser.
    stray = event(len(history) + 1, ev.STEP_STARTED, RUN, step_id="s9", name="s9")
    world.watches = [Stream([*history[1:], stray], per_message=len(history))]

    received = await read_events(gateway.http, events_url(), AUTH)

    assert_relayed(received, history)
    assert world.watch_calls == [(RUN, 3)]


@pytest.mark.parametrize("status", [ev.RUNNING, ev.COMPLETED, ev.FAILED, ev.PAUSED])
async def test_other_runs_are_followed_never_started(gateway: Gateway, status: str) -> None:
    world = gateway.world
    world.add_run(status)

    received = await read_events(gateway.http, events_url(), {**AUTH, "Last-Event-ID": "3"})

    assert_relayed(received, world.history[RUN][3:])  # strictly after Last-Event-ID
    assert world.execute_calls == [] and len(world.watch_calls) == 1


@BOTH_SERVERS
@pytest.mark.parametrize("overrides", [{"sse_queue_events": 16}])
async def test_a_late_joiner_gets_the_whole_history_beyond_its_inbox(gateway: Gateway) -> None:
    """Joining a long run late replays from memory, outside the bounded inbox: not dropped."""
    world = gateway.world
    world.add_run(ev.RUNNING)
    history = [
        *(event(i, ev.STEP_DELTA, text="t") for i in range(1, 100)),
        event(100, ev.RUN_COMPLETED),
    ]
    world.history[RUN] = history
    world.watches = [Stream(history, pace_s=0.01)]
    sixty = asyncio.Event()

    async def first_tab() -> list[int]:
        seqs: list[int] = []
        async with gateway.http.stream("GET", events_url(), headers=AUTH) as response:
            async for frame in frames(response):
                if frame.event is not None:
                    seqs.append(frame.seq)
                    if len(seqs) == 60:
                        sixty.set()
        return seqs

    first = asyncio.create_task(first_tab())
    await sixty.wait()
    late = await read_events(gateway.http, events_url(), AUTH)
    assert [f.seq for f in late] == [e.seq for e in history]
    assert await first == [e.seq for e in history]
    assert len(world.watch_calls) == 1  # one upstream served both


async def test_last_event_id_query_parameter_and_access_token(gateway: Gateway) -> None:
    world = gateway.world
    world.add_run(ev.RUNNING)
    url = f"{events_url()}?last_event_id=2&access_token={KEY}"  # what EventSource can send

    received = await read_events(gateway.http, url, {})

    assert_relayed(received, world.history[RUN][2:])


async def test_the_last_event_id_header_wins_over_the_query_parameter(gateway: Gateway) -> None:
    """EventSource reconnects to the URL it was given, `?last_event_id=2` and all, and sends
    the last id it received as the header: the header says where the browser is."""
    world = gateway.world
    world.add_run(ev.RUNNING)
    url = f"{events_url()}?last_event_id=2&access_token={KEY}"

    received = await read_events(gateway.http, url, {"Last-Event-ID": "5"})

    assert_relayed(received, world.history[RUN][5:])  # from seq 6 on


async def test_broken_watch_is_retried_from_the_last_seq_sent(gateway: Gateway) -> None:
    world = gateway.world
    world.add_run(ev.RUNNING)
    history = world.history[RUN]
    world.watches = [Stream(history[:2], then="unavailable")]

    received = await read_events(gateway.http, events_url(), AUTH)

    assert_relayed(received, history)
    assert world.watch_calls == [(RUN, 0), (RUN, 2)]


@BOTH_SERVERS
@pytest.mark.parametrize("overrides", [{"sse_heartbeat_s": 0.1}])
async def test_idle_stream_sends_keepalive_comments(gateway: Gateway) -> None:
    world = gateway.world
    world.add_run(ev.RUNNING)
    world.watches = [Stream(world.history[RUN][:1], then="hang")]

    seen: list[Frame] = []
    async with (
        gateway.http.stream("GET", events_url(), headers=AUTH) as response,
        contextlib.aclosing(bounded_frames(response)) as reader,
    ):
        while sum("keepalive" in f.comments for f in seen) < 2:
            seen.append(await anext(reader))

    kinds = ["retry" if f.retry else f.event or f"comment:{f.comments[0]}" for f in seen]
    assert kinds == ["retry", ev.RUN_STARTED, "comment:keepalive", "comment:keepalive"]


async def raw_request(base_url: str, request: bytes) -> tuple[bytes, bytes]:
    """Bytes no HTTP client would send: the status line and the body of the answer."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 5)  # the gateway closes after a 400
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


@pytest.mark.parametrize(
    ("request_bytes", "field"),
    [
        (
            b"GET /v1/runs/x/events HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 1\x7f\r\n\r\n",
            "Last-Event-ID",
        ),
        (
            b"GET /v1/runs HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \x01k\r\n\r\n",
            "Authorization",
        ),
        (b"GET /v1/r\x7fns HTTP/1.1\r\nHost: a\r\n\r\n", "request line"),
    ],
)
async def test_a_request_http_cannot_parse_gets_a_json_400_naming_the_field(
    gateway: Gateway, request_bytes: bytes, field: str
) -> None:
    status, body = await raw_request(gateway.base_url, request_bytes)

    assert status == b"HTTP/1.1 400 Bad Request"
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_argument"
    assert error["field"] == field
    assert gateway.world.watch_calls == [] and gateway.world.execute_calls == []


# --- the event stream: disconnects and slow clients ----------------------------------------


@BOTH_SERVERS
@pytest.mark.parametrize("status", [ev.PENDING, ev.RUNNING])
async def test_closed_tab_cancels_the_upstream_and_never_the_run(
    gateway: Gateway, status: str
) -> None:
    world = gateway.world
    world.add_run(status)
    stream = Stream(world.history[RUN][:2], then="hang")
    if status == ev.PENDING:
        world.executes = [stream]
    else:
        world.watches = [stream]
    assert await gateway.upstreams() == 0

    # One iterator kept open: an abandoned one would close the connection when collected.
    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=5) as tab,
        tab.stream("GET", events_url(), headers=AUTH) as response,
        contextlib.aclosing(bounded_frames(response)) as reader,
    ):
        seqs = [f.seq async for f in take_events(reader, 2)]
        assert seqs == [1, 2]
        assert await gateway.upstreams() == 1
        assert not stream.cancelled.is_set()
    # the tab is closed (its connection with it)

    await asyncio.wait_for(stream.cancelled.wait(), 10)
    await eventually(gateway.upstreams, lambda n: n == 0, timeout_s=10, what="upstream released")
    assert world.cancel_calls == 0


@BOTH_SERVERS
async def test_two_tabs_get_the_same_events_and_the_run_starts_once(gateway: Gateway) -> None:
    world = gateway.world
    world.add_run(ev.PENDING)
    # A second Execute loses the claim, as the real engine's would.
    world.executes = [Stream(world.history[RUN]), FailedPrecondition("already claimed")]

    first, second = await asyncio.gather(
        read_events(gateway.http, events_url(), AUTH),
        read_events(gateway.http, events_url(), AUTH),
    )

    assert_relayed(first, world.history[RUN])
    assert_relayed(second, world.history[RUN])
    assert len(world.execute_calls) <= 2  # one per connection at most, never a restart
    await eventually(gateway.upstreams, lambda n: n == 0, timeout_s=10, what="upstreams released")


@BOTH_SERVERS
@pytest.mark.parametrize("overrides", [{"sse_queue_events": 16}])
async def test_a_client_that_stops_reading_is_dropped_alone_without_gaps(
    gateway: Gateway,
) -> None:
    world = gateway.world
    world.add_run(ev.RUNNING)
    # ~10 MB, more than loopback socket buffers hold (~4 MB), so the queue of a client that
    # does not read must overflow; paced so that a client that reads keeps up.
    bulk = [event(i, ev.STEP_DELTA, text="x" * 65_536) for i in range(1, 151)]
    history = [*bulk, event(151, ev.RUN_COMPLETED)]
    world.history[RUN] = history
    world.watches = [Stream(history, pace_s=0.002), Stream(history, pace_s=0.002)]

    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=5) as slow_client,
        slow_client.stream("GET", events_url(), headers=AUTH) as slow,
    ):
        assert slow.status_code == 200
        fast = await read_events(gateway.http, events_url(), AUTH)  # meanwhile, not reading
        assert [f.seq for f in fast] == [e.seq for e in history]  # the other tab is unaffected
        slow_seqs = [f.seq async for f in bounded_frames(slow) if f.event is not None]

    # Ended early (EventSource will reconnect with Last-Event-ID), but never with a hole.
    assert slow_seqs and slow_seqs[-1] < 151
    assert slow_seqs == list(range(1, len(slow_seqs) + 1))
    await eventually(gateway.upstreams, lambda n: n == 0, timeout_s=10, what="upstreams released")


async def bounded_frames(
    response: httpx.Response, limit_s: float = 10.0
) -> AsyncGenerator[Frame, None]:
    """`frames` with an overall deadline, so a stream that never ends fails the test fast (10 s:
    a loaded machine may stall a passing stream for a second or two).
    Exhaust it or close it (`aclosing`): the deadline lives until then."""
    async with asyncio.timeout(limit_s):
        async for frame in frames(response):
            yield frame


async def take_events(frames: AsyncIterator[Frame], count: int) -> AsyncIterator[Frame]:
    """The next `count` event frames (skipping retry and comments), leaving `frames` open."""
    while count:
        frame = await anext(frames)
        if frame.event is not None:
            count -= 1
            yield frame


async def test_a_request_that_asks_to_close_gets_one_connection_header(gateway: Gateway) -> None:
    """The stream said `keep-alive` itself, and the server added `close`: both at once."""
    gateway.world.add_run(ev.COMPLETED)
    host, port = gateway.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET {events_url()} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        f"Authorization: Bearer {KEY}\r\n\r\n".encode()
    )
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head = data.split(b"\r\n\r\n")[0].decode().lower().split("\r\n")
    assert [line for line in head if line.startswith("connection:")] == ["connection: close"]
    assert "event: run_completed" in data.decode()


async def read_slowly(base_url: str, headers: dict[str, str]) -> list[int]:
    """A browser on a slow link: it reads nothing for a second, then everything."""
    seqs: list[int] = []
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=20) as http,
        http.stream("GET", events_url(), headers=headers) as response,
    ):
        assert response.status_code == 200
        await asyncio.sleep(1.0)
        async for frame in frames(response):
            if frame.event is not None:
                seqs.append(frame.seq)
    return seqs


@BOTH_SERVERS
@pytest.mark.parametrize("overrides", [{"sse_queue_events": 50}])
async def test_the_first_browser_of_a_long_run_gets_its_history_whole(gateway: Gateway) -> None:
    """No one follows the run: its history comes from the upstream's replay, in a burst, and
    was counted against the inbox, so the browser was dropped part-way (and each reconnect
    re-read the run from its start)."""
    world = gateway.world
    run = world.add_run(ev.COMPLETED)
    history = [
        # ~12 MB: more than loopback's socket buffers hold, so most waits in the process
        *(event(i, ev.STEP_DELTA, text="x" * 8192) for i in range(1, 1500)),
        event(1500, ev.RUN_COMPLETED),
    ]
    world.history[RUN] = history
    run.last_seq = 1500

    seqs = await asyncio.wait_for(read_slowly(gateway.base_url, AUTH), 30)

    assert seqs == list(range(1, 1501))
    assert world.watch_calls == [(RUN, 0)]


async def test_a_reconnect_to_an_unfollowed_run_reads_on_from_its_last_event_id(
    gateway: Gateway,
) -> None:
    world = gateway.world
    world.add_run(ev.COMPLETED)

    received = await read_events(gateway.http, events_url(), {**AUTH, "Last-Event-ID": "3"})

    assert_relayed(received, world.history[RUN][3:])
    assert world.watch_calls == [(RUN, 3)]  # not from the start again


async def test_stored_events_come_about_a_megabyte_at_a_time_and_none_read_for_nothing(
    gateway: Gateway,
) -> None:
    """A page without an event stream polls these; a step's output can be large, so one
    answer holds about 1 MB of events at most (one at least), and a poll with nothing new
    opens no watch at all."""
    world = gateway.world
    run = world.add_run(ev.COMPLETED)
    big = "x" * 300_000
    world.history[RUN] = [
        event(1, ev.RUN_STARTED),
        *(event(seq, ev.STEP_COMPLETED, step_id="s0", output=big) for seq in range(2, 8)),
        event(8, ev.RUN_COMPLETED),
    ]
    run.last_seq = 8
    url = f"/v1/runs/{RUN}/events/stored"

    pages: list[list[int]] = []
    while not pages or pages[-1][-1] < run.last_seq:
        after = pages[-1][-1] if pages else 0
        response = await gateway.http.get(url, params={"after_seq": after}, headers=AUTH)
        assert response.status_code == 200, response.text
        pages.append([e["seq"] for e in response.json()["events"]])

    assert pages == [[1, 2, 3, 4, 5], [6, 7, 8]]
    assert world.watch_calls == [(RUN, 0), (RUN, 5)]
    nothing = await gateway.http.get(url, params={"after_seq": 8}, headers=AUTH)
    assert nothing.json()["events"] == [] and len(world.watch_calls) == 2


# --- the OpenAPI document ---------------------------------------------------------------

EVENTS_ROUTE = "/v1/runs/{run_id}/events"
ERROR_STATUSES = ("400", "401", "404", "409", "413", "503", "default")


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


async def test_the_document_gives_every_v1_error_the_body_the_gateway_answers(
    gateway: Gateway,
) -> None:
    doc = (await gateway.http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    # FastAPI's 422 {"detail": [...]}: the gateway answers a request it cannot validate with 400.
    assert "HTTPValidationError" not in schemas
    documented = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    v1 = [(method, path, op) for method, path, op in operations(doc) if path.startswith("/v1/")]
    assert len(v1) >= 30
    for method, path, op in operations(doc):
        assert "422" not in op["responses"], f"{method} {path}"
    for method, path, op in v1:
        for key in ERROR_STATUSES:
            assert op["responses"][key]["content"] == documented, (method, path, key)
    body = schemas["ErrorBody"]
    assert body["required"] == ["error"]
    error = schemas[body["properties"]["error"]["$ref"].rsplit("/", 1)[1]]
    assert set(error["required"]) == set(error["properties"]) == {"code", "message", "field"}
    # The errors really answered carry exactly the documented fields.
    start = f"/v1/workflows/{WORKFLOW}/runs"
    assert (await gateway.http.post(start, headers=AUTH)).status_code == 201
    answered = [
        (await gateway.http.get(f"/v1/runs/{RUN}/events/stored?after_seq=-1", headers=AUTH), 400),
        (await gateway.http.get("/v1/workflows"), 401),
        (await gateway.http.get(events_url(MISSING), headers=AUTH), 404),
        (await gateway.http.post(start, headers=AUTH), 409),
    ]
    for response, status in answered:
        assert_error(response, status)
        assert set(response.json()) == {"error"}
        assert set(response.json()["error"]) == set(error["properties"])


def test_the_document_says_which_operations_take_a_key_and_how() -> None:
    doc = create_app().openapi()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    token = schemes["access_token"]
    assert (token["type"], token["in"], token["name"]) == ("apiKey", "query", "access_token")
    for method, path, op in operations(doc):
        security = op.get("security")
        if path == EVENTS_ROUTE:  # EventSource cannot set headers: either one
            assert security == [{"bearer": []}, {"access_token": []}]
            names = {p["name"] for p in op["parameters"]}
            assert "access_token" not in names  # the scheme, not a parameter of its own
        elif path.startswith("/v1/"):
            assert security == [{"bearer": []}], f"{method} {path}"
        else:  # /healthz, /metrics: no key
            assert not security, f"{method} {path}"
    assert {"/healthz", "/metrics"} <= set(doc["paths"])
    assert "/" not in doc["paths"] and not any(p.startswith("/static") for p in doc["paths"])
    assert "security" not in doc  # no key asked of the whole API: the public routes need none

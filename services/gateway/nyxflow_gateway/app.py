"""The FastAPI application: channels opened in the lifespan, routes, errors, the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from nyxflow import metrics
from nyxflow.client import open_channel
from nyxflow.errors import NyxflowError, ResourceExhausted
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway import errors
from nyxflow_gateway.coalesce import Coalescer
from nyxflow_gateway.deps import BEARER, Clients, ServicesByKey, api_key
from nyxflow_gateway.headers import SecurityHeaders, page_policy
from nyxflow_gateway.hub import RunHub
from nyxflow_gateway.key_check import KeyCheck
from nyxflow_gateway.readiness import router as readiness
from nyxflow_gateway.routes import personas, pipelines, projects, runs, steps, workflows
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_gateway.stopping import CutShort

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "index.html"
# A body larger than a gRPC message could not be sent on anyway.
MAX_BODY_BYTES = int(dict(CHANNEL_OPTIONS)["grpc.max_send_message_length"])


class Intake:
    """What a request must show before its body is read: a declared size within the limit
    and, for the API, a key runs takes. FastAPI reads and parses a route's body before the
    route's dependencies run, the key's among them, and runs sees the key only with the
    route's call: anyone could make the gateway read and parse any body up to the limit
    before its 401. A body sent without a length (chunked) is bounded while it is read, by
    Starlette's RequestBodyLimitMiddleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await _intake(scope)
            except NyxflowError as error:
                await errors.response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _intake(scope: Scope) -> None:
    headers = Headers(scope=scope)
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ResourceExhausted(f"at most {MAX_BODY_BYTES} bytes", field="body")
    sends_body = (length is not None and length.strip("0") != "") or (
        "transfer-encoding" in headers
    )
    # Every /v1 route that takes a body takes the key from the header: its dependency would
    # refuse a malformed one, and runs a made-up one, but only after the body.
    if sends_body and scope["path"].startswith("/v1/"):
        key_check: KeyCheck = scope["app"].state.key_check
        await key_check(await api_key(await BEARER(Request(scope))))


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.hub = RunHub(
            settings.sse_queue_events,
            settings.sse_heartbeat_s,
            settings.sse_keep_events,
            settings.sse_keep_bytes,
            settings.sse_queue_bytes,
            settings.execute_silence_s,
            stall_s=settings.sse_stall_s,
        )
        app.state.run_status = Coalescer[pb.Run]()
        app.state.runs_channel = open_channel(settings.runs_addr)
        app.state.engine_channel = open_channel(settings.engine_addr)
        app.state.services = ServicesByKey(
            app.state.runs_channel, app.state.engine_channel, settings.rpc_timeout_s
        )
        app.state.key_check = KeyCheck(app.state.services)
        try:
            yield
        finally:
            await app.state.hub.close()
            await app.state.runs_channel.close()
            await app.state.engine_channel.close()

    app = FastAPI(
        title="nyxflow",
        summary="Durable multi-step LLM workflows, streamed live.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    # Outermost last: the body's declared size and the key are checked before the limit.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY_BYTES)
    app.add_middleware(Intake)
    app.add_middleware(CutShort)  # a request the server's stop cancels: a 503, not its 500
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, Intake's refusals too
    app.state.stopping = False  # set as the server begins to stop (stopping.py)
    # The API, under one router: its errors are documented once, for every operation.
    api = APIRouter(responses=errors.RESPONSES)
    for module in (workflows, runs, steps, personas, projects, pipelines):
        api.include_router(module.router)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")  # the page's JS and CSS

    framed_policy = page_policy(PAGE.read_text(encoding="utf-8"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        text = PAGE.read_text(encoding="utf-8")
        return HTMLResponse(text, headers={"Content-Security-Policy": framed_policy})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. Readiness (runs and the engine up) is /readyz."""
        return {"status": "ok"}

    app.include_router(readiness)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics_text() -> PlainTextResponse:
        """Prometheus text format; no key, like /healthz (bind the gateway privately or
        filter /metrics at the proxy)."""
        metrics.SSE_UNSENT_BYTES.set(app.state.hub.unsent_bytes())
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/debug/streams", tags=["health"])
    async def streams(clients: Clients) -> dict[str, Any]:
        """Counts across every tenant's runs: only for a key runs takes (one cheap call)."""
        await clients.runs.list_personas()
        hub: RunHub = app.state.hub
        return {"upstream_streams": hub.upstream_streams, "channels": hub.channels}

    app.include_router(api)
    answer_head(app)
    return app


def answer_head(app: FastAPI) -> None:
    """HEAD wherever GET is answered (an uptime check may ask /healthz with HEAD): the GET's
    endpoint under HEAD, out of the document; the server sends the headers only. Not the event
    stream: its GET starts a pending run, and a HEAD must change nothing."""
    for route in list(iter_route_contexts(app.router.routes)):
        path, endpoint = route.path, route.endpoint
        if (
            path is None
            or endpoint is None
            or endpoint is runs.run_events
            or not isinstance(route.original_route, APIRoute)
            or "GET" not in (route.methods or ())
        ):
            continue
        app.add_api_route(
            path,
            endpoint,
            methods=["HEAD"],
            include_in_schema=False,
            status_code=route.status_code,
            response_class=route.response_class,
            dependencies=route.dependencies,
            name=route.name,
        )

"""With an OTLP endpoint set, one browser request is one trace: gateway → engine → runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.databases import REDIS_URL
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.inprocess import API_KEY
from tests.support.processes import ProcessStack, running_stack
from tests.support.sse_client import read_events


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP collector that keeps (service, trace id, span name) of every span."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, str, str]] = []
        self.values: list[str] = []  # every string attribute of every span

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        assert isinstance(self.server, Collector)
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.server.spans.append((service, span.trace_id.hex(), span.name))
                    self.server.values += [a.value.string_value for a in span.attributes]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_: object) -> None:  # quiet
        return None


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_one_request_is_one_trace_across_the_services(collector: Collector, tmp_path: Path) -> None:
    env = {"NYXFLOW_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running_stack("postgresql", tmp_path, REDIS_URL, env) as stack:
        asyncio.run(_one_run(stack))
        together = asyncio.run(
            eventually(
                lambda: _services_in_one_trace(collector),
                lambda s: {"nyxflow-gateway", "nyxflow-engine", "nyxflow-runs"} <= s,
                timeout_s=15,
                what="gateway, engine and runs spans in one trace",
            )
        )
        assert together
    names = {name for _, _, name in collector.spans}
    assert "/nyxflow.v1.Engine/Execute" in names and "/nyxflow.v1.Runs/ClaimRun" in names
    # The stream was followed as the page does, the key in the query: it is not exported.
    assert not [v for v in collector.values if API_KEY in v]
    assert any("access_token=***" in v for v in collector.values)


async def _one_run(stack: ProcessStack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        workflow = await create_workflow(http, stack, "traced", steps(2, tokens=3))
        run_id = await start_run(http, stack, workflow["id"])
        url = f"/v1/runs/{run_id}/events?access_token={API_KEY}"
        events = await read_events(http, url, {})
        assert events[-1].event == "run_completed"


async def _services_in_one_trace(collector: Collector) -> set[str]:
    by_trace: dict[str, set[str]] = {}
    for service, trace_id, _ in list(collector.spans):
        by_trace.setdefault(trace_id, set()).add(service)
    return max(by_trace.values(), key=len, default=set())

"""OpenTelemetry tracing across gateway → engine → runs, on only when an exporter is set.

Off (the default) nothing is imported or instrumented, so it costs nothing. On, each service
exports its spans over OTLP/HTTP and the gRPC and HTTP instrumentations carry the trace
context from the browser's request to the runs service's writes.
"""

from __future__ import annotations

from typing import Any

from nyxflow.logs import redact


def configure(service: str, endpoint: str | None) -> bool:
    """Call first thing at start-up, before any gRPC server or channel is made."""
    if not endpoint:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"nyxflow-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    return True


def instrument_app(app: Any) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, server_request_hook=_redact_request)


def _redact_request(span: Any, _scope: dict[str, Any]) -> None:
    """The request's URL attributes (http.url, http.target, url.query …) without the key the
    page's EventSource puts in the query: spans go to a collector that more people read than
    the gateway's own logs, which are scrubbed alike."""
    attributes = getattr(span, "attributes", None) or {}
    for key, value in list(attributes.items()):
        if isinstance(value, str) and (kept := redact(value)) != value:
            span.set_attribute(key, kept)


def shutdown() -> None:
    """Flush what is buffered (a stopping service's last spans)."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()

"""Prometheus metrics of the suite, declared once. Each service process exports the ones it
moves: the gateway on `/metrics`, runs and engine on `METRICS_PORT` (0 = off)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from nyxflow.errors import InvalidArgument

RUNS_CREATED = Counter("nyxflow_runs_created_total", "Runs created (pending).")
RUNS_FINISHED = Counter(
    "nyxflow_runs_finished_total", "Runs that reached a final or paused status.", ["status"]
)
EVENTS_WRITTEN = Counter("nyxflow_events_written_total", "Run events persisted by runs.")
SWEPT = Counter("nyxflow_sweeper_swept_total", "Orphaned runs failed or requeued by the sweeper.")
RUNS_REQUEUED = Counter(
    "nyxflow_runs_requeued_total",
    "Runs handed to another engine (on_orphan: resume), by cause: orphaned | drained.",
    ["cause"],
)
LEASE_RENEWALS = Counter("nyxflow_lease_renewals_total", "Heartbeats that extended a lease.")
STEP_SECONDS = Histogram(
    "nyxflow_step_duration_seconds",
    "Wall time of a step, by kind and the provider that served it.",
    ["kind", "provider"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
PROVIDER_ERRORS = Counter(
    "nyxflow_provider_errors_total", "Provider failures by what was done about them.",
    ["provider", "action"],
)  # fmt: skip
PROVIDER_FALLBACKS = Counter(
    "nyxflow_provider_fallbacks_total", "Switches to the next provider of a chain.",
    ["from_provider", "to_provider"],
)  # fmt: skip
SSE_CLIENTS = Gauge("nyxflow_sse_clients", "SSE clients connected to this gateway.")
UPSTREAM_STREAMS = Gauge("nyxflow_upstream_streams", "Run streams this gateway holds open.")
SSE_UNSENT_BYTES = Gauge(
    "nyxflow_sse_unsent_bytes",
    "Bytes of run events held for SSE clients: in their connections' buffers or pending.",
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """The metrics port of a gRPC service; port 0 leaves it off. A port taken (or out of
    range) is refused naming the setting: the service cannot start as configured."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except (OSError, OverflowError) as error:  # OverflowError: a port above 65535
        reason = getattr(error, "strerror", None) or str(error)
        raise InvalidArgument(
            f"cannot serve metrics on {host}:{port}: {reason}", field="NYXFLOW_METRICS_PORT"
        ) from None


def provider_of(entry: str) -> str:
    """'anthropic:claude-sonnet-4' → 'anthropic': labels stay few (no model names)."""
    return entry.partition(":")[0] or "unknown"

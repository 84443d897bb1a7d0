"""Settings of the gateway."""

from __future__ import annotations

from pydantic import Field

from nyxflow.settings import CommonSettings


class GatewaySettings(CommonSettings):
    # every address a name resolves to is listened on; empty: every interface
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    # A client connection whose sent data (or keepalive probe) goes unacknowledged this long
    # is closed: a browser that vanished without a word held its stream for ~15 min. 0: off.
    # At most a day: TCP_KEEPIDLE (a third of it) stops at 32767 s.
    peer_timeout_s: float = Field(default=30.0, ge=0, le=86400)
    sse_retry_ms: int = Field(default=3000, ge=0)
    # per client: a client this far behind is dropped, alone (0 dropped every client at once)
    sse_queue_events: int = Field(default=1000, ge=1)
    sse_queue_bytes: int = Field(default=8 * 1024 * 1024, ge=0)  # the same, in unsent bytes
    # A client that takes none of its history (or backlog) this long is dropped: until then
    # the history waits, sse_queue_bytes of it at most, for it to read.
    sse_stall_s: float = Field(default=30.0, gt=0)
    # per followed run: events kept for browsers that join late or reconnect; one that needs
    # older ones gets its own stream from runs
    sse_keep_events: int = Field(default=5000, ge=0)
    # and at most this many bytes of them: 5,000 long results would be hundreds of MB a run
    sse_keep_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    # An engine's Execute stream silent this long is left for runs' WatchRun: an engine frozen
    # (or cut off) holds it open without a word while the run is swept and finished elsewhere.
    execute_silence_s: float = Field(default=15.0, gt=0)

"""Settings of the engine service."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from nyxflow.settings import CommonSettings


def _default_engine_id() -> str:
    return f"engine-{socket.gethostname()}-{os.getpid()}"


class EngineSettings(CommonSettings):
    engine_listen: str = "127.0.0.1:50052"
    engine_id: str = Field(default_factory=_default_engine_id)
    lease_ttl_s: float = 30.0
    heartbeat_s: float = 10.0
    delta_flush_ms: float = 50.0  # at most one step_delta event per step per this long
    group_commit_ms: float = 50.0  # progress is committed at most this long after it happens
    write_retry_s: float = 30.0  # how long a write to runs is retried while runs is unavailable
    shutdown_grace_s: float = 10.0

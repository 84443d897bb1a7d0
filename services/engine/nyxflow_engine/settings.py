"""Settings of the engine service."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from nyxflow.constants import MAX_CHAIN, PROVIDERS
from nyxflow.settings import InternalSettings, no_dev_secret_beyond_loopback


def _default_engine_id() -> str:
    return f"engine-{socket.gethostname()}-{os.getpid()}"


class EngineSettings(InternalSettings):
    engine_listen: str = "127.0.0.1:50052"
    # runs takes a lease's owner of 1 to 200 characters: another id could claim no run
    engine_id: str = Field(default_factory=_default_engine_id, min_length=1, max_length=200)
    lease_ttl_s: float = Field(default=30.0, gt=0, le=3600)  # runs refuses longer leases
    heartbeat_s: float = Field(default=10.0, gt=0)  # shorter than the lease (below)
    # at most one step_delta event per step per this long (0: each delta as it comes)
    delta_flush_ms: float = Field(default=50.0, ge=0)
    # progress is committed at most this long after it happens
    group_commit_ms: float = Field(default=50.0, gt=0)
    # how long a write to runs is retried while runs is unavailable
    write_retry_s: float = Field(default=30.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # how often requeued runs (on_orphan: resume) are looked for
    adopt_interval_s: float = Field(default=1.0, gt=0)
    runs_wait_s: float = Field(default=60.0, ge=0)  # start-up waits this long for the runs service
    # A tenant's test command: in namespaces of its own (tools/sandbox.py), or "none": beside
    # the engine, able to read the engine's /proc. Checked at start-up, never turned off quietly.
    command_sandbox: Literal["namespaces", "none"] = "namespaces"
    command_network: bool = False  # true: a sandboxed command shares the host's network
    # Per process of a tenant's command (tools/sandbox.py); 0: no limit.
    command_memory_mb: int = Field(default=4096, ge=0)  # writable memory (RLIMIT_DATA)
    command_file_mb: int = Field(default=1024, ge=0)  # the largest file written (RLIMIT_FSIZE)
    # Providers: keys are secrets (never logged, never stored); base URLs point at proxies,
    # test servers or, for openai_compatible, a local model server.
    # The chain for steps whose step, workflow and tenant name none.
    default_providers: list[str] = Field(default_factory=lambda: ["local"])
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    google_api_key: SecretStr | None = None
    google_base_url: str | None = None
    openai_compatible_api_key: SecretStr | None = None
    openai_compatible_base_url: str | None = "http://127.0.0.1:11434/v1"
    # per read in the SDKs; and the longest a request may bring no text (chain.py: stall_s)
    provider_timeout_s: float = Field(default=300.0, gt=0)
    provider_attempts: int = Field(default=3, ge=1)  # per provider before the next one
    provider_backoff_s: float = Field(default=0.5, ge=0)
    provider_backoff_max_s: float = Field(default=8.0, ge=0)
    # retries of one provider stop after this long
    provider_budget_s: float = Field(default=120.0, gt=0)

    @field_validator("engine_listen")
    @classmethod
    def _no_dev_secret_beyond_loopback(cls, listen: str, info: ValidationInfo) -> str:
        return no_dev_secret_beyond_loopback(listen, info.data.get("internal_secret"))

    @field_validator("heartbeat_s")
    @classmethod
    def _a_heartbeat_within_the_lease(cls, heartbeat_s: float, info: ValidationInfo) -> float:
        """A heartbeat no shorter than the lease let it lapse: live runs were swept as orphans."""
        ttl = info.data.get("lease_ttl_s")
        if ttl is not None and heartbeat_s >= ttl:
            raise ValueError(f"must be shorter than NYXFLOW_LEASE_TTL_S ({ttl:g} s)")
        return heartbeat_s

    @field_validator("default_providers")
    @classmethod
    def _a_chain_that_can_serve(cls, chain: list[str]) -> list[str]:
        """Refused at start, as runs refuses a workflow's chain: taken, it failed every step
        that ran on it, with no error ([]) or a misleading one."""
        if not chain:
            raise ValueError('names no provider: at least one, e.g. ["local"]')
        if len(chain) > MAX_CHAIN:
            raise ValueError(f"at most {MAX_CHAIN} providers")
        for entry in chain:
            name = entry.partition(":")[0].strip()
            if name not in PROVIDERS:
                raise ValueError(f"unknown provider {name!r} (one of {', '.join(PROVIDERS)})")
        return chain

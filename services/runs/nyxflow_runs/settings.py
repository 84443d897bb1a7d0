"""Settings of the runs service."""

from __future__ import annotations

import ipaddress

from pydantic import Field, ValidationInfo, field_validator

from nyxflow.settings import DEV_INTERNAL_SECRET, InternalSettings

REDIS_SCHEMES = ("redis", "rediss", "unix")


class RunsSettings(InternalSettings):
    database_url: str = "sqlite+aiosqlite:///.nyxflow/nyxflow.db"
    redis_url: str | None = None
    api_key: str = "dev-key"  # the default tenant's key, stored hashed
    admin_key: str | None = None  # guards the Admin service; unset = admin API off
    runs_listen: str = "127.0.0.1:50051"
    sweep_interval_s: float = Field(default=5.0, gt=0)  # 0 swept without pause: a core
    watch_poll_s: float = Field(
        default=1.0, gt=0
    )  # how often a watcher re-reads the database when the bus is quiet
    # Off in production: the schema changes only through `nyxflow db upgrade`, and an
    # unmigrated database is refused at start. `nyxflow up` and the tests turn it on.
    migrate_on_start: bool = False
    # start-up waits this long for the database to answer
    database_wait_s: float = Field(default=60.0, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _a_url_redis_takes(cls, url: str | None) -> str | None:
        """redis-py's refusal of another scheme was a traceback (the URL, with its password,
        is not quoted here)."""
        if url and url.partition("://")[0].lower() not in REDIS_SCHEMES:
            raise ValueError("expected redis://host:6379/0, rediss://… (TLS) or unix://path")
        return url

    @field_validator("runs_listen")
    @classmethod
    def _no_dev_secret_beyond_loopback(cls, listen: str, info: ValidationInfo) -> str:
        """With the well-known secret, anyone who reaches the port acts as any tenant."""
        if info.data.get("internal_secret") == DEV_INTERNAL_SECRET and not _loopback(listen):
            raise ValueError(
                "listens beyond loopback with the development NYXFLOW_INTERNAL_SECRET, which "
                "lets anyone who reaches it act as any tenant: set a secret of your own"
            )
        return listen


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]") or "0.0.0.0"  # ":50051" is every address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything

"""Settings of the runs service."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from nyxflow.settings import InternalSettings, no_dev_secret_beyond_loopback

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
        return no_dev_secret_beyond_loopback(listen, info.data.get("internal_secret"))

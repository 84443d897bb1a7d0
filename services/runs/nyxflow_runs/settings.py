"""Settings of the runs service."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from redis.connection import parse_url

from nyxflow.auth import MAX_KEY, checked_key
from nyxflow.errors import Unauthenticated
from nyxflow.settings import InternalSettings, no_dev_secret_beyond_loopback
from nyxflow_runs.bus import REDIS_TIMEOUT_S

REDIS_SCHEMES = ("redis", "rediss", "unix")


class RunsSettings(InternalSettings):
    database_url: str = "sqlite+aiosqlite:///.nyxflow/nyxflow.db"
    redis_url: str | None = None
    # Redis silent this long is taken for gone (bus.py): its publish fails, its reader
    # reconnects; watchers poll the database meanwhile.
    redis_timeout_s: float = Field(default=REDIS_TIMEOUT_S, gt=0, le=300)
    api_key: str = "dev-key"  # the default tenant's key, stored hashed
    admin_key: str | None = None  # guards the Admin service; unset = admin API off
    runs_listen: str = "127.0.0.1:50051"
    sweep_interval_s: float = Field(default=5.0, gt=0)  # 0 swept without pause: a core
    # At start, before serving, every running run's lease is given at least this long (by the
    # database's clock): a lease that lapsed while runs itself was away (a restart, a deploy)
    # says nothing of its engine, which is renewing again once runs is back. The engines'
    # NYXFLOW_LEASE_TTL_S is the right value; 0: none. An engine that died meanwhile is
    # swept this much later, as is one a replica's start finds (at most one grace).
    sweep_start_grace_s: float = Field(default=30.0, ge=0, le=3600)
    watch_poll_s: float = Field(
        default=1.0, gt=0
    )  # how often a watcher re-reads the database when the bus is quiet
    # Off in production: the schema changes only through `nyxflow db upgrade`, and an
    # unmigrated database is refused at start. `nyxflow up` and the tests turn it on.
    migrate_on_start: bool = False
    # start-up waits this long for the database to answer
    database_wait_s: float = Field(default=60.0, ge=0)
    # A query the database has not answered in this long fails (UNAVAILABLE, the engine
    # retries its write) and its connection is dropped: a database frozen, or a connection a
    # NAT or load balancer forgot, held the sweeper and the watchers' poller for good. 0:
    # none. Migrations (`nyxflow db upgrade`, NYXFLOW_MIGRATE_ON_START) have none either.
    database_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    # Set by `nyxflow up`: on SIGTERM, serve on until the engine at this host:port is gone (it
    # pauses its runs through runs), or STOP_AFTER_WITHIN_S have passed; unset, stop at once.
    stop_after: str = ""
    stop_after_within_s: float = Field(default=15.0, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _a_url_redis_takes(cls, url: str | None) -> str | None:
        """redis-py's refusal of another scheme or a bad port was a traceback at start (the
        URL, with its password, is not quoted here)."""
        expected = "expected redis://host:6379/0, rediss://… (TLS) or unix://path"
        if not url:
            return url
        if url.partition("://")[0].lower() not in REDIS_SCHEMES:
            raise ValueError(expected)
        try:
            parse_url(url)  # type: ignore[no-untyped-call]  # a bad port: a traceback at start
        except ValueError:
            # Never redis-py's words: they quote the part they could not read, and a password
            # holding an unencoded / or ? was read as the port.
            raise ValueError(
                "the host, port (0-65535) or db cannot be read (percent-encode a password's "
                f"/, ?, # and @); {expected}"
            ) from None
        return url

    @field_validator("stop_after")
    @classmethod
    def _an_address_to_watch(cls, address: str) -> str:
        """A typo would have been read as an engine long gone: runs stopped at once."""
        host, colon, port = address.rpartition(":")
        if address and not (
            colon and host and port.isascii() and port.isdigit() and 0 < int(port) <= 65535
        ):
            raise ValueError("expected the engine's host:port, e.g. 127.0.0.1:50052")
        return address

    @field_validator("api_key")
    @classmethod
    def _a_key_a_client_can_send(cls, key: str) -> str:
        """A key gRPC metadata cannot carry (empty, a .env file's trailing newline, a space)
        was taken, and its rotation revoked the key the default tenant had: locked out."""
        try:
            return checked_key(key)
        except Unauthenticated:
            raise ValueError(_why_unsendable(key)) from None

    @field_validator("runs_listen")
    @classmethod
    def _no_dev_secret_beyond_loopback(cls, listen: str, info: ValidationInfo) -> str:
        return no_dev_secret_beyond_loopback(listen, info.data.get("internal_secret"))


def _why_unsendable(key: str) -> str:
    """What is wrong with a key, never the key."""
    if not key:
        return "is empty: no client could send it"
    if len(key) > MAX_KEY:
        return f"has {len(key)} characters: at most {MAX_KEY}"
    return (
        "has a character no client can send (a space, a control character such as a "
        "trailing newline, or one beyond ASCII)"
    )

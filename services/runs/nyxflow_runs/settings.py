"""Settings of the runs service."""

from __future__ import annotations

from nyxflow.settings import CommonSettings


class RunsSettings(CommonSettings):
    database_url: str = "sqlite+aiosqlite:///.nyxflow/nyxflow.db"
    redis_url: str | None = None
    api_key: str = "dev-key"  # the default tenant's key, stored hashed
    admin_key: str | None = None  # guards the Admin service; unset = admin API off
    runs_listen: str = "127.0.0.1:50051"
    sweep_interval_s: float = 5.0
    watch_poll_s: float = 1.0  # how often a watcher re-reads the database when the bus is quiet
    # Off in production: the schema changes only through `nyxflow db upgrade`, and an
    # unmigrated database is refused at start. `nyxflow up` and the tests turn it on.
    migrate_on_start: bool = False
    database_wait_s: float = 60.0  # start-up waits this long for the database to answer

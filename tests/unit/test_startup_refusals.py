"""What a service is given at start-up and cannot use is refused naming the setting: the
database URL (the form hosts hand out is taken), a metrics port taken, a list not JSON, a
command sandbox that cannot be built."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from nyxflow.cli.connection import load_settings
from nyxflow.errors import InvalidArgument
from nyxflow.metrics import serve_metrics
from nyxflow_engine.settings import EngineSettings
from nyxflow_engine.tools.sandbox import Sandbox, Walls
from nyxflow_engine.tools.sandbox_check import refuse_a_broken_sandbox
from nyxflow_runs.db import asyncpg_options, create_engine
from nyxflow_runs.settings import RunsSettings


@pytest.mark.parametrize(
    "url",
    ["postgresql://app:pw@db.example:5432/app", "postgres://app:pw@db.example:5432/app"],
)
async def test_a_hosts_postgres_url_is_taken_as_asyncpg(url: str) -> None:
    engine = create_engine(url)  # connects to nothing until used
    try:
        assert engine.url.drivername == "postgresql+asyncpg"
        assert (engine.url.host, engine.url.database, engine.url.password) == (
            "db.example",
            "app",
            "pw",
        )
    finally:
        await engine.dispose()


async def test_libpqs_sslmode_becomes_asyncpgs_ssl() -> None:
    engine = create_engine("postgres://app@db.example/app?sslmode=require")
    try:
        assert dict(engine.url.query) == {"ssl": "require"}
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "not a url with a secret",
        "postgresql+asyncpg://app:secret@db.example:port/app",
        "mysql://app:secret@db.example/app",
        "postgresql+psycopg2://app:secret@db.example/app",
        "sqlite:///secret.db",
    ],
    ids=["unparsable", "port-not-a-number", "other-database", "sync-driver", "sqlite-sync"],
)
def test_a_database_url_that_cannot_be_used_names_the_setting(url: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        create_engine(url)
    assert refused.value.field == "NYXFLOW_DATABASE_URL"
    assert "secret" not in refused.value.message  # a URL may hold a password: never quoted


def test_a_metrics_port_taken_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidArgument) as refused:
            serve_metrics(port)
    assert refused.value.field == "NYXFLOW_METRICS_PORT"
    assert f"127.0.0.1:{port}: Address already in use" in refused.value.message


def test_a_list_setting_that_is_not_json_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NYXFLOW_DEFAULT_PROVIDERS", "local")
    with pytest.raises(InvalidArgument) as refused:
        load_settings(EngineSettings)
    assert refused.value.field == "NYXFLOW_DEFAULT_PROVIDERS"


async def test_a_sandbox_that_cannot_be_built_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await refuse_a_broken_sandbox(Sandbox())  # it works here
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare to be found

    with pytest.raises(InvalidArgument) as refused:
        await refuse_a_broken_sandbox(Sandbox())

    assert refused.value.field == "NYXFLOW_COMMAND_SANDBOX"
    assert "cannot run unshare" in refused.value.message
    await refuse_a_broken_sandbox(Sandbox(namespaces=False))  # none: nothing to build


async def test_a_sandbox_whose_walls_cannot_be_built_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Namespaces alone passed the check; then every review's test command, which runs
    within walls, failed and every diff was rejected."""
    gone = tmp_path / "gone"  # a bind of a path that is not there cannot be made

    def unbuildable(walls: Walls, size_mb: int) -> tuple[str, ...]:
        return (f"--tmpfs={size_mb << 20}:{walls.cover}", f"--bind=ro:{gone}")

    monkeypatch.setattr(Walls, "options", unbuildable)

    with pytest.raises(InvalidArgument) as refused:
        await refuse_a_broken_sandbox(Sandbox())

    assert refused.value.field == "NYXFLOW_COMMAND_SANDBOX"
    assert "walls" in refused.value.message


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.5:50051"])
def test_runs_beyond_loopback_refuses_the_development_secret(
    monkeypatch: pytest.MonkeyPatch, listen: str
) -> None:
    """Anyone reaching the port could act as any tenant with the secret every copy knows."""
    monkeypatch.delenv("NYXFLOW_INTERNAL_SECRET", raising=False)
    monkeypatch.setenv("NYXFLOW_RUNS_LISTEN", listen)
    with pytest.raises(InvalidArgument) as refused:
        load_settings(RunsSettings)
    assert refused.value.field == "NYXFLOW_RUNS_LISTEN"
    assert "NYXFLOW_INTERNAL_SECRET" in refused.value.message

    monkeypatch.setenv("NYXFLOW_INTERNAL_SECRET", "a-secret-of-our-own")
    assert load_settings(RunsSettings).runs_listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051"])
def test_runs_on_loopback_keeps_the_development_secret(
    monkeypatch: pytest.MonkeyPatch, listen: str
) -> None:
    monkeypatch.delenv("NYXFLOW_INTERNAL_SECRET", raising=False)
    monkeypatch.setenv("NYXFLOW_RUNS_LISTEN", listen)
    assert load_settings(RunsSettings).runs_listen == listen


async def test_libpqs_connect_timeout_becomes_asyncpgs_timeout() -> None:
    """Hosts hand out `?sslmode=require&connect_timeout=10`: asyncpg has no connect_timeout,
    and the first connection ended in a TypeError traceback."""
    engine = create_engine("postgresql://app@db.example/app?sslmode=require&connect_timeout=10")
    try:
        assert dict(engine.url.query) == {"ssl": "require"}
    finally:
        await engine.dispose()
    _, arguments = asyncpg_options(make_url("postgresql+asyncpg://db.example/app?timeout=2.5"))
    assert arguments == {"timeout": 2.5}


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("application_name=app", "'application_name' is not one this driver takes"),
        ("connect_timeout=ten", "'connect_timeout' must be seconds above 0"),
        ("connect_timeout=0", "'connect_timeout' must be seconds above 0"),
        ("sslmode=require&sslmode=disable", "'ssl' is given more than once"),
        ("sslmode=bogus", "sslmode must be one of disable, allow, prefer, require"),
        ("ssl=on", "sslmode must be one of disable, allow, prefer, require"),
    ],
)
def test_a_postgresql_option_the_driver_cannot_take_is_refused(query: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        create_engine(f"postgresql://app:secret@db.example/app?{query}")
    assert refused.value.field == "NYXFLOW_DATABASE_URL"
    assert why in refused.value.message and "secret" not in refused.value.message

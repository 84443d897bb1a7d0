"""Starting up: NOT_SERVING until the database answers, and no serving on a schema other
than the code's; migrations and models agree; what a service cannot start with is refused in
one line naming the setting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import Connection

from nyxflow.cli.supervisor import wait_grpc_serving
from nyxflow_runs import migrate
from nyxflow_runs.db import create_engine
from nyxflow_runs.models import Base
from tests.support.ports import free_port


def start_runs(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], str]:
    listen = f"127.0.0.1:{free_port()}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
    environment.update(NYXFLOW_RUNS_LISTEN=listen, **env)
    process = subprocess.Popen(
        [sys.executable, "-m", "nyxflow_runs"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    return process, listen


async def health(address: str) -> int | None:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.aio.AioRpcError:
            return None
        return int(answer.status)


async def test_an_unmigrated_database_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    process, _ = start_runs(tmp_path, NYXFLOW_DATABASE_URL=url)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "nyxflow db upgrade" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["nyxflow_runs", "migrate"], {}),  # `nyxflow db upgrade`
        (["nyxflow_runs"], {"NYXFLOW_MIGRATE_ON_START": "true"}),  # `make run`
        (["nyxflow_runs"], {}),
    ],
    ids=["migrate", "migrate-on-start", "serve"],
)
def test_a_database_of_a_newer_schema_is_refused_in_one_line(
    tmp_path: Path, command: list[str], env: dict[str, str]
) -> None:
    """The code rolled back under a database a later release migrated: alembic's "Can't
    locate revision" traceback, or advice to run `nyxflow db upgrade`, which cannot help."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'newer.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "nyxflow_runs", "migrate"],
        env={**os.environ, "NYXFLOW_DATABASE_URL": url},
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "newer.db") as connection:  # what a later release did
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    line = refusal(tmp_path, command, NYXFLOW_DATABASE_URL=url, **env).strip().splitlines()[-1]
    head = migrate.head_revision()
    assert f"at schema 9999, newer than this code (head {head}): run a newer nyxflow" in line
    assert "upgrade" not in line


async def test_not_serving_until_the_database_answers(tmp_path: Path) -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    process, listen = start_runs(tmp_path, NYXFLOW_DATABASE_URL=dead, NYXFLOW_DATABASE_WAIT_S="6")
    try:
        statuses: list[int | None] = [None]
        # Until it answers or gives up: a loaded machine may take seconds to start it.
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            statuses.append(await health(listen))
            if statuses[-1] is not None:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
        assert process.returncode != 0 and "database unreachable" in stderr
    finally:
        if process.poll() is None:
            process.kill()


async def test_migrations_build_exactly_the_models(database_url: str) -> None:
    """Checked on a database the migrations built (the fixture), both backends."""
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection)
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


def refusal(
    tmp_path: Path, command: list[str], wrapper: tuple[str, ...] = (), /, **env: str
) -> str:
    """The stderr of a service that refused to start: one line naming why, no traceback.
    `wrapper`: a command line the service is started through."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
    environment.update(
        NYXFLOW_RUNS_LISTEN=f"127.0.0.1:{free_port()}",
        NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{free_port()}",
        NYXFLOW_GATEWAY_PORT=str(free_port()),
    )
    environment.update(env)
    done = subprocess.run(
        [*wrapper, sys.executable, "-m", *command],
        env=environment,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done.stderr


@pytest.mark.parametrize(
    "command,setting,value",
    [
        (["nyxflow_runs"], "NYXFLOW_SWEEP_INTERVAL_S", "five"),
        (["nyxflow_runs"], "NYXFLOW_SWEEP_INTERVAL_S", "0"),  # it swept without pause
        (["nyxflow_runs"], "NYXFLOW_DATABASE_URL", "mysql://app@db.example/app"),
        (["nyxflow_runs", "migrate"], "NYXFLOW_DATABASE_URL", "not a url"),
        (["nyxflow_runs"], "NYXFLOW_REDIS_URL", "http://127.0.0.1:6379/0"),
        (["nyxflow_runs"], "NYXFLOW_DATABASE_URL", "postgresql://db.example/app?gssencmode=x"),
        (["nyxflow_engine"], "NYXFLOW_LEASE_TTL_S", "0"),
        (["nyxflow_engine"], "NYXFLOW_HEARTBEAT_S", "30"),  # the lease's: live runs swept
        (["nyxflow_engine"], "NYXFLOW_DEFAULT_PROVIDERS", "local"),
        (["nyxflow_engine"], "NYXFLOW_COMMAND_SANDBOX", "chroot"),
        (["nyxflow_gateway"], "NYXFLOW_GATEWAY_PORT", "http"),
        (["nyxflow_gateway"], "NYXFLOW_RPC_TIMEOUT_S", "0"),  # every request failed
        # tracebacks (setsockopt, round), or a refusal blaming NYXFLOW_GATEWAY_PORT (100000)
        (["nyxflow_gateway"], "NYXFLOW_PEER_TIMEOUT_S", "1e12"),
        (["nyxflow_gateway"], "NYXFLOW_PEER_TIMEOUT_S", "inf"),
        (["nyxflow_gateway"], "NYXFLOW_PEER_TIMEOUT_S", "100000"),
        (["nyxflow_runs"], "NYXFLOW_REDIS_URL", "redis://127.0.0.1:99999/0"),  # a traceback
        (["nyxflow_runs"], "NYXFLOW_REDIS_URL", "redis://127.0.0.1:abc/0"),
        # retried for NYXFLOW_DATABASE_WAIT_S as "database unreachable"
        (["nyxflow_runs"], "NYXFLOW_DATABASE_URL", "postgresql://127.0.0.1/x?sslmode=bogus"),
        # grpc wrapped the port round: runs served on 127.0.0.1:34463 when asked for 99999
        (["nyxflow_runs"], "NYXFLOW_RUNS_LISTEN", "127.0.0.1:99999"),
        (["nyxflow_runs"], "NYXFLOW_RUNS_LISTEN", "127.0.0.1:65536"),
        (["nyxflow_runs"], "NYXFLOW_RUNS_LISTEN", "127.0.0.1:-5"),
        (["nyxflow_engine"], "NYXFLOW_ENGINE_LISTEN", "127.0.0.1:99999"),
        (["nyxflow_runs"], "NYXFLOW_LOG_LEVEL", "verbose"),
        (["nyxflow_engine"], "NYXFLOW_LOG_LEVEL", "verbose"),
        (["nyxflow_gateway"], "NYXFLOW_LOG_LEVEL", "verbose"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line_naming_it(
    tmp_path: Path, command: list[str], setting: str, value: str
) -> None:
    stderr = refusal(tmp_path, command, **{setting: value})
    assert f"nyxflow {command[0].removeprefix('nyxflow_')}: {setting}: " in stderr


@pytest.mark.parametrize("command", [["nyxflow_runs"], ["nyxflow_runs", "migrate"]])
@pytest.mark.parametrize("query", ["", "?sslmode=disable&connect_timeout=10"])
def test_a_hosts_postgresql_url_is_used_not_refused(
    tmp_path: Path, command: list[str], query: str
) -> None:
    """The driver psycopg is not installed: `postgresql://` is asyncpg's (nothing listens).
    With libpq's connect_timeout, which asyncpg lacks, it was a TypeError traceback."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere{query}"
    stderr = refusal(tmp_path, command, NYXFLOW_DATABASE_URL=url, NYXFLOW_DATABASE_WAIT_S="1")
    assert "database unreachable" in stderr


def test_a_metrics_port_taken_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = refusal(tmp_path, ["nyxflow_engine"], NYXFLOW_METRICS_PORT=str(port))
    assert f"NYXFLOW_METRICS_PORT: cannot serve metrics on 127.0.0.1:{port}" in stderr


@pytest.mark.parametrize(
    ("command", "setting"),
    [(["nyxflow_runs"], "NYXFLOW_RUNS_LISTEN"), (["nyxflow_engine"], "NYXFLOW_ENGINE_LISTEN")],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_grpc_listen_port_taken_is_refused_naming_the_setting(
    tmp_path: Path, command: list[str], setting: str, host: str
) -> None:
    """It was grpc's RuntimeError traceback, naming neither the setting nor the address. And
    localhost:P with 127.0.0.1:P taken was served on ::1 alone (grpc binds what it can of
    a name's addresses): IPv4 clients reached the other program."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"{host}:{taken.getsockname()[1]}"
        stderr = refusal(
            tmp_path,
            command,
            **{setting: listen},
            NYXFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
            NYXFLOW_MIGRATE_ON_START="true",
            NYXFLOW_COMMAND_SANDBOX="none",
        )
    assert f"{setting}: cannot listen on {listen}" in stderr.strip().splitlines()[-1]


def test_a_second_runs_service_on_a_port_in_use_is_refused(tmp_path: Path) -> None:
    """grpc binds with SO_REUSEPORT: a second runs service (another database) started on the
    port of a running one, and the kernel split the connections between the two."""
    first, listen = start_runs(
        tmp_path,
        NYXFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'first.db'}",
        NYXFLOW_MIGRATE_ON_START="true",
    )
    try:
        wait_grpc_serving(listen, 30)
        stderr = refusal(
            tmp_path,
            ["nyxflow_runs"],
            NYXFLOW_RUNS_LISTEN=listen,
            NYXFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'second.db'}",
            NYXFLOW_MIGRATE_ON_START="true",
        )
        assert f"NYXFLOW_RUNS_LISTEN: cannot listen on {listen}" in stderr
    finally:
        first.terminate()
        first.communicate(timeout=15)


# The engine in a user namespace that may create none: as where user namespaces are off.
NO_USER_NAMESPACES = (
    "unshare",
    "--user",
    "--map-current-user",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"',
    "sh",
)


@pytest.mark.parametrize(
    ("wrapper", "env", "why"),
    [
        ((), {"PATH": "/nonexistent"}, "cannot run unshare: No such file or directory"),
        (NO_USER_NAMESPACES, {}, "unshare failed: No space left on device"),
    ],
    ids=["no-unshare", "no-user-namespaces"],
)
def test_an_engine_that_cannot_sandbox_commands_refuses_to_start(
    tmp_path: Path, wrapper: tuple[str, ...], env: dict[str, str], why: str
) -> None:
    """Never a quiet start without the sandbox: the one line says why and what to do."""
    stderr = refusal(tmp_path, ["nyxflow_engine"], wrapper, **env)
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("nyxflow engine: NYXFLOW_COMMAND_SANDBOX: "), stderr
    assert why in line and "NYXFLOW_COMMAND_SANDBOX=none" in line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_the_gateway_stopped_by_a_signal_exits_0_without_a_traceback(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """After its graceful stop uvicorn raised the signal again: Ctrl-C printed a
    KeyboardInterrupt traceback, and SIGTERM ended the gateway by the signal (runs and the
    engine exit 0)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "nyxflow_gateway"],
        env={**environment, "NYXFLOW_GATEWAY_PORT": str(port)},
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # until it answers
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and gateway.poll() is None, "it never answered"
            time.sleep(0.1)
        gateway.send_signal(sig)
        _, stderr = gateway.communicate(timeout=20)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.communicate()
    assert gateway.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]

"""Starting up: NOT_SERVING until the database answers, and no serving on a schema other
than the code's; migrations and models agree."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import Connection

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


async def test_not_serving_until_the_database_answers(tmp_path: Path) -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    process, listen = start_runs(tmp_path, NYXFLOW_DATABASE_URL=dead, NYXFLOW_DATABASE_WAIT_S="6")
    try:
        statuses = []
        for _ in range(40):
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

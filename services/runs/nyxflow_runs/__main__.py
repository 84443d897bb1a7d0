"""`python -m nyxflow_runs [serve|migrate]`."""

from __future__ import annotations

import asyncio
import sys

from nyxflow import logs, loop, tracing
from nyxflow.cli.connection import load_settings, refusal_to_start
from nyxflow.grpc_server import stop_after
from nyxflow_runs import migrate
from nyxflow_runs.db import create_engine, wait_for_database
from nyxflow_runs.service import serve
from nyxflow_runs.settings import RunsSettings


async def _migrate(settings: RunsSettings) -> None:
    engine = create_engine(settings.database_url)
    try:
        # as serving does: a database that is not up yet (or not there) is waited for, then
        # refused in one line
        await wait_for_database(engine, settings.database_wait_s)
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


async def _serve(settings: RunsSettings) -> None:
    """Stopped by SIGTERM at once, or (NYXFLOW_STOP_AFTER) once the engine is gone."""
    if not settings.stop_after:
        await serve(settings)
        return
    stop = asyncio.Event()
    stop_after(stop, settings.stop_after, settings.stop_after_within_s)
    await serve(settings, stop=stop)


def main() -> None:
    loop.hand_over_io_quickly()
    with refusal_to_start("runs"):  # a refusal to start says why, without a traceback
        settings = load_settings(RunsSettings)
        logs.configure("runs", settings.log_level)
        command = sys.argv[1] if len(sys.argv) > 1 else "serve"
        traced = command == "serve" and tracing.configure("runs", settings.otlp_endpoint)
        try:
            if command == "migrate":
                asyncio.run(_migrate(settings))
            elif command == "serve":
                loop.settle_heap()
                loop.run(_serve(settings))
            else:
                sys.exit(f"usage: python -m nyxflow_runs [serve|migrate], not {command!r}")
        finally:
            if traced:
                tracing.shutdown()


if __name__ == "__main__":
    main()

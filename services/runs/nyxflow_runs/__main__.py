"""`python -m nyxflow_runs [serve|migrate]`."""

from __future__ import annotations

import asyncio
import logging
import sys

from nyxflow import logs, loop, tracing
from nyxflow.errors import NyxflowError
from nyxflow_runs import migrate
from nyxflow_runs.db import create_engine
from nyxflow_runs.service import serve
from nyxflow_runs.settings import RunsSettings


async def _migrate(settings: RunsSettings) -> None:
    engine = create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


def main() -> None:
    loop.hand_over_io_quickly()
    settings = RunsSettings()
    logs.configure("runs", settings.log_level)
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    traced = command == "serve" and tracing.configure("runs", settings.otlp_endpoint)
    try:
        if command == "migrate":
            asyncio.run(_migrate(settings))
        elif command == "serve":
            loop.settle_heap()
            loop.run(serve(settings))
        else:
            sys.exit(f"usage: python -m nyxflow_runs [serve|migrate], not {command!r}")
    except NyxflowError as error:  # a refusal to start says why, without a traceback
        logging.getLogger("nyxflow_runs").error(error.message, extra={"action": "start"})
        sys.exit(f"nyxflow runs: {error.message}")
    finally:
        if traced:
            tracing.shutdown()


if __name__ == "__main__":
    main()

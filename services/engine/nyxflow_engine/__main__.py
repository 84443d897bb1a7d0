"""`python -m nyxflow_engine`."""

from __future__ import annotations

import asyncio

from nyxflow import logs, loop, tracing
from nyxflow_engine.service import serve
from nyxflow_engine.settings import EngineSettings


def main() -> None:
    loop.hand_over_io_quickly()
    settings = EngineSettings()
    logs.configure("engine", settings.log_level)
    traced = tracing.configure("engine", settings.otlp_endpoint)
    loop.settle_heap()
    try:
        # asyncio's own loop, not uvloop (runs, gateway): the engine runs git and the
        # pipelines' test commands, and uvloop's child processes lose their exit status
        # now and then under concurrency.
        asyncio.run(serve(settings))
    finally:
        if traced:
            tracing.shutdown()


if __name__ == "__main__":
    main()

"""`python -m nyxflow_engine`."""

from __future__ import annotations

import asyncio

from nyxflow import logs
from nyxflow_engine.service import serve
from nyxflow_engine.settings import EngineSettings


def main() -> None:
    settings = EngineSettings()
    logs.configure("engine", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

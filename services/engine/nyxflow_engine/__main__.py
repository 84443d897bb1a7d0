"""`python -m nyxflow_engine`."""

from __future__ import annotations

from nyxflow import logs, loop, tracing
from nyxflow.cli.connection import load_settings, refusal_to_start
from nyxflow_engine.service import serve
from nyxflow_engine.settings import EngineSettings


def main() -> None:
    loop.hand_over_io_quickly()
    with refusal_to_start("engine"):
        settings = load_settings(EngineSettings)
        logs.configure("engine", settings.log_level)
        traced = tracing.configure("engine", settings.otlp_endpoint)
        loop.settle_heap()
        try:
            # uvloop, as runs: its children (git, test commands) are polled, not watched by the
            # loop (tools/commands.py), since uvloop's watcher lost an exit status now and then.
            loop.run(serve(settings))
        finally:
            if traced:
                tracing.shutdown()


if __name__ == "__main__":
    main()

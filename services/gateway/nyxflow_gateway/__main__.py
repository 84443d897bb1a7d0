"""`python -m nyxflow_gateway`."""

from __future__ import annotations

import uvicorn

from nyxflow import logs, loop, tracing
from nyxflow.cli.connection import load_settings, refusal_to_start
from nyxflow_gateway.app import create_app
from nyxflow_gateway.http_protocol import Protocol
from nyxflow_gateway.settings import GatewaySettings


def main() -> None:
    loop.hand_over_io_quickly()
    with refusal_to_start("gateway"):
        settings = load_settings(GatewaySettings)
        logs.configure("gateway", settings.log_level)
        traced = tracing.configure("gateway", settings.otlp_endpoint)
        app = create_app(settings)
        if traced:
            tracing.instrument_app(app)
        loop.settle_heap()
        try:
            uvicorn.run(
                app,
                host=settings.gateway_host,
                port=settings.gateway_port,
                log_config=None,  # our JSON logging
                loop="uvloop",
                http=Protocol,  # httptools, refusing what it cannot parse in our JSON (see there)
                timeout_graceful_shutdown=5,
            )
        finally:
            if traced:
                tracing.shutdown()


if __name__ == "__main__":
    main()

"""`python -m nyxflow_gateway`."""

from __future__ import annotations

import uvicorn

from nyxflow import logs, tracing
from nyxflow_gateway.app import create_app
from nyxflow_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    logs.configure("gateway", settings.log_level)
    traced = tracing.configure("gateway", settings.otlp_endpoint)
    app = create_app(settings)
    if traced:
        tracing.instrument_app(app)
    try:
        uvicorn.run(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            log_config=None,  # our JSON logging
            loop="uvloop",
            # h11, not httptools: httptools refuses some header bytes before the app sees
            # them, with a plain-text 400 that names no field.
            http="h11",
            timeout_graceful_shutdown=5,
        )
    finally:
        if traced:
            tracing.shutdown()


if __name__ == "__main__":
    main()

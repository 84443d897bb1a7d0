"""`python -m nyxflow_gateway`."""

from __future__ import annotations

import uvicorn

from nyxflow import logs
from nyxflow_gateway.app import create_app
from nyxflow_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    logs.configure("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,  # our JSON logging
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()

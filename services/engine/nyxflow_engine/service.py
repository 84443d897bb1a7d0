"""Assembles the engine: a channel to runs, the executor and the gRPC server."""

from __future__ import annotations

import asyncio
import logging

from nyxflow import metrics
from nyxflow.client import open_channel
from nyxflow.grpc_server import GrpcService, wait_serving
from nyxflow.v1 import engine_pb2, engine_pb2_grpc
from nyxflow_engine.executor import Executor
from nyxflow_engine.providers.registry import Providers
from nyxflow_engine.servicer import EngineServicer
from nyxflow_engine.settings import EngineSettings

log = logging.getLogger(__name__)

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["Engine"].full_name


async def serve(
    settings: EngineSettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, or until `stop` is set when embedded (tests)."""
    channel = open_channel(settings.runs_addr)
    executor = Executor(channel, settings, Providers.from_settings(settings))
    service = GrpcService([SERVICE_NAME], settings.engine_listen, stop)
    engine_pb2_grpc.add_EngineServicer_to_server(EngineServicer(executor), service.server)
    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)
    log.info("engine serving", extra={"action": "start", "engine_id": settings.engine_id})
    try:
        await service.run(
            # NOT_SERVING until runs answers: an engine that cannot write must not take work.
            prepare=lambda: wait_serving(channel, settings.runs_wait_s),
            on_drain=lambda: executor.drain(settings.shutdown_grace_s),
            grace_s=settings.shutdown_grace_s,
            ready=ready,
        )
    finally:
        await channel.close()

"""Assembles the runs service: database, bus, store, sweeper and the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nyxflow.grpc_server import GrpcService
from nyxflow.v1 import admin_pb2, admin_pb2_grpc, runs_pb2, runs_pb2_grpc
from nyxflow_runs import db_errors, migrate
from nyxflow_runs.admin_servicer import AdminServicer
from nyxflow_runs.bus import create_bus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.servicer import RunsServicer
from nyxflow_runs.settings import RunsSettings
from nyxflow_runs.store import Store
from nyxflow_runs.sweeper import sweep_forever
from nyxflow_runs.tenancy import Tenancy

log = logging.getLogger(__name__)

SERVICE_NAME = runs_pb2.DESCRIPTOR.services_by_name["Runs"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


async def serve(
    settings: RunsSettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, or until `stop` is set when embedded (tests)."""
    engine = create_engine(settings.database_url)
    if settings.migrate_on_start:
        await migrate.upgrade(engine)
    bus = create_bus(settings.redis_url)
    await bus.start()
    store = Store(session_factory(engine), bus)
    await store.ensure_default_tenant(settings.api_key)
    service = GrpcService(
        [SERVICE_NAME, ADMIN_SERVICE_NAME], settings.runs_listen, stop, db_errors.translate
    )
    tenancy = Tenancy(store, settings.internal_secret)
    runs_pb2_grpc.add_RunsServicer_to_server(
        RunsServicer(store, bus, tenancy, settings.watch_poll_s), service.server
    )
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(store, tenancy, settings.admin_key, settings.internal_secret),
        service.server,
    )
    sweeper = asyncio.create_task(sweep_forever(store, settings.sweep_interval_s), name="sweeper")
    log.info("runs serving", extra={"action": "start", "listen": settings.runs_listen})
    try:
        await service.run(ready=ready)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await bus.close()
        await engine.dispose()

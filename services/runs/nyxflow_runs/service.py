"""Assembles the runs service: database, bus, store, sweeper and the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from nyxflow import metrics
from nyxflow.grpc_server import GrpcService
from nyxflow.tasks import cancel_and_wait
from nyxflow.v1 import admin_pb2, admin_pb2_grpc, runs_pb2, runs_pb2_grpc
from nyxflow_runs import db_errors, migrate
from nyxflow_runs.admin_servicer import AdminServicer
from nyxflow_runs.bus import create_bus
from nyxflow_runs.db import (
    answers,
    create_engine,
    create_probe_engine,
    session_factory,
    wait_for_database,
)
from nyxflow_runs.polling import RunPoller
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
    engine = create_engine(settings.database_url, settings.database_timeout_s)
    bus = create_bus(settings.redis_url, settings.redis_timeout_s)
    store = Store(session_factory(engine), bus, settings.database_timeout_s)
    service = GrpcService(
        [SERVICE_NAME, ADMIN_SERVICE_NAME],
        settings.runs_listen,
        stop,
        db_errors.translate,
        setting="NYXFLOW_RUNS_LISTEN",
    )
    tenancy = Tenancy(store, settings.internal_secret, bus)
    poller = RunPoller(store, settings.watch_poll_s)  # the idle watchers', one for them all
    servicer = RunsServicer(store, bus, tenancy, poller, settings.repos_root)
    runs_pb2_grpc.add_RunsServicer_to_server(servicer, service.server)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(
            store, tenancy, settings.admin_key, settings.internal_secret, settings.repos_root
        ),
        service.server,
    )

    async def prepare() -> None:
        """NOT_SERVING until the database answers and has this code's schema."""
        await wait_for_database(engine, settings.database_wait_s)
        if settings.migrate_on_start:
            await _migrate(settings.database_url)
        await migrate.require_current(engine)
        await _grace_leases(store, settings.sweep_start_grace_s)  # first: a Start sweeps too
        await bus.start()
        _, revoked = await store.ensure_default_tenant(settings.api_key)
        if revoked:
            log.warning(
                "revoked the keys of an earlier NYXFLOW_API_KEY",
                extra={"action": "rotate_api_key", "revoked": revoked},
            )
            await tenancy.key_revoked()  # refused at once, on every replica
        background.append(
            asyncio.create_task(sweep_forever(store, settings.sweep_interval_s), name="sweeper")
        )

    # A SQLite file does not go away, and a probe would queue behind writes for its one
    # connection: only a database over the network is followed.
    probe = create_probe_engine(settings.database_url) if engine.dialect.name != "sqlite" else None
    check = partial(answers, probe) if probe is not None else None
    background: list[asyncio.Task[None]] = []
    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)
    log.info("runs starting", extra={"action": "start", "listen": settings.runs_listen})
    try:
        await service.run(prepare=prepare, ready=ready, check=check)
    finally:
        for task in background:
            await cancel_and_wait(task)
        await poller.close()
        await bus.close()
        await store.close()
        await engine.dispose()
        if probe is not None:
            await probe.dispose()


async def _grace_leases(store: Store, grace_s: float) -> None:
    """Before the first sweep, and before serving (so only the runs running now): the
    engines could renew no lease while runs was away, and had their runs swept at once."""
    extended = await store.extend_leases_all_tenants(grace_s)
    if extended:
        log.info(
            "leases extended at start",
            extra={"action": "start_grace", "runs": extended, "grace_s": grace_s},
        )


async def _migrate(url: str) -> None:
    """On an engine of its own, without the serving one's query timeout: a migration may
    rewrite a big table for longer."""
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()

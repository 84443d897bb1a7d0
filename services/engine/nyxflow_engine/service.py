"""Assembles the engine: a channel to runs, the executor and the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from nyxflow import metrics
from nyxflow.auth import engine_metadata
from nyxflow.client import RunsClient, open_channel
from nyxflow.errors import InvalidArgument, NyxflowError, Unauthenticated
from nyxflow.grpc_server import GrpcService, is_serving, wait_serving
from nyxflow.v1 import engine_pb2, engine_pb2_grpc
from nyxflow_engine.adopter import adopt_forever
from nyxflow_engine.executor import Executor
from nyxflow_engine.providers.registry import Providers
from nyxflow_engine.servicer import EngineServicer
from nyxflow_engine.settings import EngineSettings
from nyxflow_engine.tools import scratch
from nyxflow_engine.tools.sandbox import Sandbox
from nyxflow_engine.tools.sandbox_check import refuse_a_broken_sandbox

log = logging.getLogger(__name__)

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["Engine"].full_name


async def _runs_takes_our_secret(runs: RunsClient) -> None:
    """Runs' health asks no credentials: an engine whose secret runs refuses said SERVING,
    took work it could not write, and its runs were failed as orphans. One cheap internal
    call finds out; any other failure is left to the adopter, which retries."""
    try:
        await runs.list_requeued_runs(limit=1)
    except Unauthenticated:
        raise InvalidArgument(
            "runs refuses it: runs and the engine must share one secret",
            field="NYXFLOW_INTERNAL_SECRET",
        ) from None
    except NyxflowError:
        pass


async def serve(
    settings: EngineSettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, or until `stop` is set when embedded (tests)."""
    await refuse_a_broken_sandbox(Sandbox.from_settings(settings))
    channel = open_channel(settings.runs_addr)
    executor = Executor(channel, settings, Providers.from_settings(settings))
    service = GrpcService(
        [SERVICE_NAME], settings.engine_listen, stop, setting="NYXFLOW_ENGINE_LISTEN"
    )
    engine_pb2_grpc.add_EngineServicer_to_server(EngineServicer(executor), service.server)
    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)
    log.info("engine serving", extra={"action": "start", "engine_id": settings.engine_id})
    runs = RunsClient(channel, engine_metadata(settings.internal_secret), settings.rpc_timeout_s)
    adopting: list[asyncio.Task[None]] = []

    async def prepare() -> None:
        # NOT_SERVING until runs answers: an engine that cannot write must not take work.
        await wait_serving(
            channel, settings.runs_wait_s, f"runs at {settings.runs_addr}", "NYXFLOW_RUNS_ADDR"
        )
        await _runs_takes_our_secret(runs)
        await asyncio.to_thread(scratch.sweep_left_behind)
        adopting.append(
            asyncio.create_task(
                adopt_forever(executor, runs, settings.adopt_interval_s), name="adopter"
            )
        )

    async def drain() -> None:
        for task in adopting:  # a draining engine takes nothing new
            task.cancel()
        await executor.drain(settings.shutdown_grace_s)

    try:
        await service.run(
            prepare=prepare,
            on_drain=drain,
            grace_s=settings.shutdown_grace_s,
            ready=ready,
            # after start-up too: an engine whose runs is gone can claim and write nothing
            check=partial(is_serving, channel),
        )
    finally:
        for task in adopting:
            task.cancel()
        await channel.close()

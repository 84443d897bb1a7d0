"""The Engine gRPC service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from nyxflow.auth import AUTHORIZATION, INTERNAL, TENANT
from nyxflow.batches import batched
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import engine_pb2, engine_pb2_grpc
from nyxflow_engine.executor import Executor

FORWARDED = frozenset({AUTHORIZATION, INTERNAL, TENANT})


class EngineServicer(engine_pb2_grpc.EngineServicer):
    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def Execute(
        self, request: engine_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEventBatch]:
        # The caller's credentials go to runs as they are: runs decides who the tenant is.
        caller = tuple(
            (k, v)
            for k, v in (context.invocation_metadata() or ())
            if k in FORWARDED and isinstance(v, str)
        )
        feed = await self._executor.start(request.run_id, caller)
        # A caller that cancels stops following here; the execution goes on.
        async for events in feed.follow_batches():
            for batch in batched(events):
                yield batch

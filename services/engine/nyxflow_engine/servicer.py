"""The Engine gRPC service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from nyxflow.auth import AUTHORIZATION, INTERNAL, TENANT
from nyxflow.batches import batched
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import engine_pb2, engine_pb2_grpc
from nyxflow_engine.executor import Executor
from nyxflow_engine.key_check import while_allowed

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
        try:
            # A caller that cancels stops following here; the execution goes on.
            source = feed.follow_batches()
            if not any(k == INTERNAL for k, _ in caller):  # the internal secret is not revoked
                # A key's stream ends once runs refuses the key (revoked, expired), as its
                # WatchRun would: the run goes on.
                runs = self._executor.runs_as(caller)
                source = while_allowed(source, lambda: runs.get_run(request.run_id, brief=True))
            async with contextlib.aclosing(source):
                async for events in source:
                    for batch in batched(events):
                        yield batch
        finally:
            feed.unfollow()  # however the call ends, no one else will take the run's events

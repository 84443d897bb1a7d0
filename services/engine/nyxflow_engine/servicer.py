"""The Engine gRPC service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from nyxflow.auth import AUTHORIZATION, INTERNAL, TENANT
from nyxflow.batches import batched
from nyxflow.errors import Unauthenticated
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import engine_pb2, engine_pb2_grpc
from nyxflow_engine.executor import Executor
from nyxflow_engine.key_check import while_allowed


class EngineServicer(engine_pb2_grpc.EngineServicer):
    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def Execute(
        self, request: engine_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEventBatch]:
        metadata = context.invocation_metadata() or ()
        if any(k in (INTERNAL, TENANT) for k, _ in metadata):
            # Internal credentials go to runs from the engine's own calls alone (adopting a
            # run calls the executor, not Execute). Forwarded, they let anyone who reached
            # this port and knew the secret (the dev one is well known) claim and read any
            # tenant's run without a key.
            raise Unauthenticated(
                "Execute takes a tenant's API key ('authorization: Bearer <key>'), "
                "not internal credentials"
            )
        # The caller's key goes to runs as it is: runs decides who the tenant is.
        caller = tuple((k, v) for k, v in metadata if k == AUTHORIZATION and isinstance(v, str))
        feed = await self._executor.start(request.run_id, caller)
        try:
            # A caller that cancels stops following here; the execution goes on. Its stream
            # ends once runs refuses the key (revoked, expired), as its WatchRun would.
            runs = self._executor.runs_as(caller)
            source = while_allowed(
                feed.follow_batches(), lambda: runs.get_run(request.run_id, brief=True)
            )
            async with contextlib.aclosing(source):
                async for events in source:
                    for batch in batched(events):
                        yield batch
        finally:
            feed.unfollow()  # however the call ends, no one else will take the run's events

"""Group commit across runs: every execution's write goes through here, and the writes that
wait while a call is in flight travel together in the next `RecordMany` (one per tenant).

One call in flight per tenant keeps the cost per write falling as load rises: a lone write
goes at once, and under load a call carries every run that wrote meanwhile. Each batch is
still answered alone (its events, or why it was refused), so one stale run costs no other.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import grpc

from nyxflow.auth import internal_metadata
from nyxflow.client import RunsClient
from nyxflow.constants import MAX_RECORD_GROUP
from nyxflow.errors import InvalidArgument, ResourceExhausted, error_from_status
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import runs_pb2

Waiting = tuple[runs_pb2.RecordRequest, "asyncio.Future[runs_pb2.WriteResponse]"]
# A call carries at most this much (a batch bigger alone goes alone): well under the 32 MiB a
# message may hold, or runs that each wrote a large result at once failed together.
GROUP_BYTES = 16 << 20
MIB = 1 << 20
MESSAGE_BYTES = int(dict(CHANNEL_OPTIONS)["grpc.max_send_message_length"])

log = logging.getLogger(__name__)


class TooBig(InvalidArgument):
    """A batch alone is past what a message holds: refused before it was sent, so runs applied
    none of it, and its ops may still go in several smaller batches. (A batch that was sent
    and applied, but whose answer no message holds, is refused as InvalidArgument.)"""


def next_group(waiting: list[Waiting]) -> int:
    """How many of `waiting` go in the next call: at most what runs takes in one call (a larger
    group was refused whole, every run in it failed) and GROUP_BYTES; at least one."""
    size = 0
    for count, (request, _) in enumerate(waiting[:MAX_RECORD_GROUP]):
        size += request.ByteSize()
        if count and size > GROUP_BYTES:
            return count
    return min(len(waiting), MAX_RECORD_GROUP)


def _refusal(request: runs_pb2.RecordRequest) -> InvalidArgument:
    """Why a batch sent alone was refused as too big: itself (TooBig), or runs' answer."""
    sent = runs_pb2.RecordManyRequest(batches=[request]).ByteSize()
    why = TooBig if sent > MESSAGE_BYTES else InvalidArgument
    return why(f"a write of {request.ByteSize() / MIB:.1f} MiB is more than a message holds")


class Committer:
    def __init__(self, channel: grpc.aio.Channel, secret: str, timeout_s: float) -> None:
        self._channel = channel
        self._secret = secret
        self._timeout_s = timeout_s
        self._waiting: dict[str, list[Waiting]] = defaultdict(list)
        self._senders: dict[str, asyncio.Task[None]] = {}

    async def record(
        self, tenant_id: str, request: runs_pb2.RecordRequest
    ) -> runs_pb2.WriteResponse:
        """Apply one run's batch; raises what runs refused it with (or why the call failed)."""
        future: asyncio.Future[runs_pb2.WriteResponse] = asyncio.get_running_loop().create_future()
        self._waiting[tenant_id].append((request, future))
        if tenant_id not in self._senders:
            self._senders[tenant_id] = asyncio.create_task(
                self._send_while_waiting(tenant_id), name=f"commit-{tenant_id}"
            )
        return await future

    async def _send_while_waiting(self, tenant_id: str) -> None:
        runs = RunsClient(
            self._channel, internal_metadata(self._secret, tenant_id), self._timeout_s
        )
        try:
            while waiting := self._waiting.get(tenant_id):
                count = next_group(waiting)  # the rest goes in the next call
                group = waiting[:count]
                del waiting[:count]
                if not waiting:
                    del self._waiting[tenant_id]
                await self._send(runs, group)
        finally:
            del self._senders[tenant_id]

    async def _send(self, runs: RunsClient, group: list[Waiting]) -> None:
        try:
            response = await runs.record_many([request for request, _ in group])
        except ResourceExhausted as too_big:
            refusal: Exception = too_big
            if len(group) == 1:  # a batch too big alone: no retry would take it
                refusal = _refusal(group[0][0])
            for _, future in group:
                if not future.done():
                    future.set_exception(refusal)
            return
        except Exception as error:  # the whole call failed: every writer retries its own
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        for (request, future), result in zip(group, response.results, strict=True):
            if result.code != grpc.StatusCode.OK.value[0]:
                # Said whether or not its writer still waits: a batch refused for a stale token
                # is the one trace of a write a swept engine tried.
                log.warning(
                    "write refused",
                    extra={"run_id": request.run_id, "code": result.code, "error": result.message},
                )
            if future.done():  # its writer was cancelled meanwhile
                continue
            if result.code == grpc.StatusCode.OK.value[0]:
                future.set_result(result.written)
            else:
                future.set_exception(error_from_status(result.code, result.message, result.field))

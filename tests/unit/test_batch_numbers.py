"""The engine numbers a claim's batches 1, 2, 3 … and keeps a batch's number and id across its
retries: runs applies none at or below the last number it applied, so a first attempt that
reaches it after its retry and later batches is not applied a second time."""

from __future__ import annotations

from typing import cast

from nyxflow.client import RunsClient
from nyxflow.errors import Unavailable
from nyxflow.v1 import runs_pb2
from nyxflow_engine.committer import Committer
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.writer import RunWriter, draft


class FlakyCommitter:
    """Refuses the first attempt of every batch as UNAVAILABLE; notes every attempt."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, str]] = []  # (token, batch_seq, batch_id)

    async def record(
        self, tenant_id: str, request: runs_pb2.RecordRequest
    ) -> runs_pb2.WriteResponse:
        self.sent.append((request.token, request.batch_seq, request.batch_id))
        if [s[2] for s in self.sent].count(request.batch_id) == 1:
            raise Unavailable("runs restarting")
        return runs_pb2.WriteResponse()


def writer(committer: FlakyCommitter, token: int) -> RunWriter:
    return RunWriter(
        cast(RunsClient, None),
        cast(Committer, committer),
        "tenant",
        "run",
        token,
        RunFeed(),
        retry_s=5.0,
        group_commit_s=60.0,  # flushed by hand
    )


async def test_batches_are_numbered_per_claim_and_keep_their_number_when_retried() -> None:
    committer = FlakyCommitter()
    first = writer(committer, token=1)
    try:
        for text in ("a", "b"):
            first.events(draft("step_delta", text=text))
            await first.flush()
        await first.finish("paused")
    finally:
        await first.close()
    second = writer(committer, token=2)  # the run claimed again: a new token
    try:
        second.events(draft("step_delta", text="c"))
        await second.flush()
    finally:
        await second.close()

    numbers = [(token, seq) for token, seq, _ in committer.sent]
    assert numbers == [(1, 1), (1, 1), (1, 2), (1, 2), (1, 3), (1, 3), (2, 1), (2, 1)]
    ids = [batch_id for _, _, batch_id in committer.sent]
    assert ids[0::2] == ids[1::2] and len(set(ids)) == 4  # a retry keeps its batch's id

"""Progress is committed within `group_commit_s` of being written, even when it is written
while the timer's own commit is on its way."""

from __future__ import annotations

import asyncio
from typing import cast

from nyxflow.client import RunsClient
from nyxflow.v1 import runs_pb2
from nyxflow_engine.committer import Committer
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.writer import RunWriter, draft

GROUP_COMMIT_S = 0.05


class SlowCommitter:
    """Answers every batch after `delay_s`, noting the event texts it carried."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.texts: list[str] = []

    async def record(
        self, tenant_id: str, request: runs_pb2.RecordRequest
    ) -> runs_pb2.WriteResponse:
        self.texts += [op.event.data_json for op in request.ops]
        await asyncio.sleep(self.delay_s)
        return runs_pb2.WriteResponse()


async def test_progress_written_during_the_timers_commit_goes_in_the_next_round() -> None:
    committer = SlowCommitter(delay_s=4 * GROUP_COMMIT_S)
    writer = RunWriter(
        cast(RunsClient, None),
        cast(Committer, committer),
        "tenant",
        "run",
        1,
        RunFeed(),
        retry_s=1.0,
        group_commit_s=GROUP_COMMIT_S,
    )
    try:
        writer.events(draft("step_delta", text="first"))
        await asyncio.sleep(2 * GROUP_COMMIT_S)  # the timer's commit of "first" is on its way
        assert len(committer.texts) == 1
        writer.events(draft("step_delta", text="second"))
        # The first commit's answer, then one more round: nothing else is ever written.
        await asyncio.sleep(10 * GROUP_COMMIT_S)
        assert len(committer.texts) == 2, committer.texts
        assert '"second"' in committer.texts[1]
    finally:
        await writer.close()

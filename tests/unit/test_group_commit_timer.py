"""Progress is committed within `group_commit_s` of being written, even when it is written
while the timer's own commit is on its way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

from nyxflow.client import RunsClient
from nyxflow.v1 import runs_pb2
from nyxflow_engine.committer import Committer
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.writer import RunWriter, draft
from tests.support.eventually import eventually

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


def count(committer: SlowCommitter) -> Callable[[], Awaitable[int]]:
    """How many events `committer` was sent, as `eventually` probes it."""

    async def probe() -> int:
        return len(committer.texts)

    return probe


async def test_progress_written_during_the_timers_commit_goes_in_the_next_round() -> None:
    committer = SlowCommitter(delay_s=4 * GROUP_COMMIT_S)
    writer = RunWriter(
        cast(RunsClient, None),
        cast(Committer, committer),
        "tenant",
        "run",
        1,
        RunFeed(),
        retry_s=60.0,  # no retry comes round to send what the timer left behind
        group_commit_s=GROUP_COMMIT_S,
    )
    try:
        writer.events(draft("step_delta", text="first"))
        # The timer's commit of "first" is on its way (waited for, not slept: a loaded
        # machine may stall this loop past any fixed guess).
        await eventually(count(committer), lambda n: n == 1, interval_s=0.005)
        writer.events(draft("step_delta", text="second"))
        # The first commit's answer, then one more round; left behind, it never comes.
        await eventually(count(committer), lambda n: n >= 2, what="the second round")
        await asyncio.sleep(4 * GROUP_COMMIT_S)  # nothing else is ever written
        assert len(committer.texts) == 2, committer.texts
        assert '"second"' in committer.texts[1]
    finally:
        await writer.close()

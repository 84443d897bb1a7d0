"""The watchers' poller: a failed round is retried, and tells its watchers to read for
themselves meanwhile."""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from nyxflow_runs.polling import RunPoller
from nyxflow_runs.store import Store

RUN = ("tenant", "run")


class FlakyStore:
    """Fails its first read, then has every watched run at seq 3, running."""

    def __init__(self) -> None:
        self.reads: list[list[tuple[str, str]]] = []

    async def watched_marks(
        self, watched: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, str]]:
        self.reads.append(list(watched))
        if len(self.reads) == 1:
            raise ConnectionError("database gone")
        return dict.fromkeys(watched, (3, "running"))


async def test_a_failed_round_is_retried_and_its_watchers_read_for_themselves() -> None:
    store = FlakyStore()
    poller = RunPoller(cast(Store, store), 0.01)
    poller.watch(*RUN)
    try:
        assert await poller.marks_since(poller.begun) is None  # failed: read yourself
        assert await poller.marks_since(poller.begun) == {RUN: (3, "running")}
        assert store.reads[:2] == [[RUN], [RUN]]
    finally:
        poller.unwatch(*RUN)
        await poller.close()


async def test_nothing_is_read_while_nothing_is_watched() -> None:
    store = FlakyStore()
    poller = RunPoller(cast(Store, store), 0.01)
    poller.watch(*RUN)
    poller.unwatch(*RUN)
    try:
        assert await poller.marks_since(poller.begun) is None  # no round: timed out
        assert store.reads == []
    finally:
        await poller.close()

"""RunFeed: its one follower gets every event from the first, in order, until the feed
closes; what it has taken, and everything once it stops following, is not kept."""

from __future__ import annotations

import asyncio

import pytest

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.feed import RunFeed


def events(first: int, count: int) -> list[pb.RunEvent]:
    return [pb.RunEvent(run_id="r", seq=s, type="step_delta") for s in range(first, first + count)]


async def collect(feed: RunFeed) -> list[int]:
    return [event.seq async for event in feed.follow()]


async def settle() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_follower_gets_everything_from_the_start_in_order() -> None:
    feed = RunFeed()
    await feed.extend(events(1, 3))  # before it follows: the claim's events
    follower = asyncio.create_task(collect(feed))
    await settle()
    await feed.extend(events(4, 2))
    await feed.extend([])  # nothing to add: a no-op
    await settle()
    await feed.extend(events(6, 1))
    await feed.close()

    async with asyncio.timeout(2):
        assert await follower == [1, 2, 3, 4, 5, 6]


async def test_a_follower_after_close_still_gets_everything_then_ends() -> None:
    feed = RunFeed()
    await feed.extend(events(1, 4))
    await feed.close()
    async with asyncio.timeout(2):
        assert await collect(feed) == [1, 2, 3, 4]


async def test_close_ends_a_waiting_follower_of_an_empty_feed() -> None:
    feed = RunFeed()
    follower = asyncio.create_task(collect(feed))
    await settle()
    assert not follower.done()  # it waits for events
    await feed.close()
    async with asyncio.timeout(2):
        assert await follower == []


async def test_what_the_follower_took_is_not_kept() -> None:
    """A 100-step run streams hundreds of thousands of deltas: the feed held them all to the
    run's end."""
    feed = RunFeed()
    taken: list[int] = []

    async def follow() -> None:
        async for batch in feed.follow_batches():
            taken.extend(e.seq for e in batch)

    task = asyncio.create_task(follow())
    for first in range(1, 1000, 100):
        await feed.extend(events(first, 100))
        await settle()
        assert feed.held == 0
    await feed.close()
    async with asyncio.timeout(2):
        await task
    assert taken == list(range(1, 1001))


@pytest.mark.parametrize("how", ["cancelled", "broke off"])
async def test_once_the_follower_stops_nothing_more_is_kept(how: str) -> None:
    feed = RunFeed()
    await feed.extend(events(1, 5))
    if how == "cancelled":
        task = asyncio.create_task(collect(feed))
        await settle()
        task.cancel()
        await settle()
        assert task.cancelled()
    else:
        follower = feed.follow()
        assert (await anext(follower)).seq == 1
        await follower.aclose()

    await feed.extend(events(6, 3))  # the run goes on, its events are runs' alone

    assert feed.held == 0
    with pytest.raises(RuntimeError):
        await anext(feed.follow_batches())  # no second follower


async def test_an_unfollowed_feed_keeps_nothing() -> None:
    """A run the engine adopted itself has no caller to follow it."""
    feed = RunFeed()
    await feed.extend(events(1, 2))
    feed.unfollow()
    await feed.extend(events(3, 2))
    assert feed.held == 0


async def test_a_follower_gets_what_is_there_in_one_batch() -> None:
    """What was ready together goes together (one stream message), and nothing twice."""
    feed = RunFeed()
    await feed.extend(events(1, 3))
    await feed.extend(events(4, 2))
    batches: list[list[int]] = []

    async def follow() -> None:
        async for batch in feed.follow_batches():
            batches.append([e.seq for e in batch])

    task = asyncio.create_task(follow())
    await settle()
    await feed.extend(events(6, 1))
    await settle()
    await feed.close()
    async with asyncio.timeout(2):
        await task
    assert batches == [[1, 2, 3, 4, 5], [6]]

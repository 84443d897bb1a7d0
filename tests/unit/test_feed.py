"""RunFeed: every follower gets every event from the first, in order, until the feed closes."""

from __future__ import annotations

import asyncio

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


async def test_followers_get_everything_from_the_start_in_order() -> None:
    feed = RunFeed()
    await feed.extend(events(1, 3))
    early = asyncio.create_task(collect(feed))
    await settle()
    await feed.extend(events(4, 2))
    await feed.extend([])  # nothing to add: a no-op
    late = asyncio.create_task(collect(feed))  # joins after five events
    await settle()
    await feed.extend(events(6, 1))
    await feed.close()

    async with asyncio.timeout(2):
        assert await early == [1, 2, 3, 4, 5, 6]
        assert await late == [1, 2, 3, 4, 5, 6]


async def test_a_follower_after_close_still_gets_everything_then_ends() -> None:
    feed = RunFeed()
    await feed.extend(events(1, 4))
    await feed.close()
    async with asyncio.timeout(2):
        assert await collect(feed) == [1, 2, 3, 4]


async def test_close_ends_waiting_followers_of_an_empty_feed() -> None:
    feed = RunFeed()
    followers = [asyncio.create_task(collect(feed)) for _ in range(3)]
    await settle()
    assert not any(f.done() for f in followers)  # they wait for events
    await feed.close()
    async with asyncio.timeout(2):
        assert await asyncio.gather(*followers) == [[], [], []]


async def test_cancelling_one_follower_does_not_affect_the_others() -> None:
    feed = RunFeed()
    await feed.extend(events(1, 2))
    cancelled = asyncio.create_task(collect(feed))
    kept = asyncio.create_task(collect(feed))
    await settle()
    cancelled.cancel()
    await settle()
    assert cancelled.cancelled()
    await feed.extend(events(3, 2))
    await feed.close()

    async with asyncio.timeout(2):
        assert await kept == [1, 2, 3, 4]
        assert await collect(feed) == [1, 2, 3, 4]  # the feed itself is intact


async def test_a_follower_that_stops_early_leaves_the_rest_going() -> None:
    feed = RunFeed()
    await feed.extend(events(1, 5))
    first_two: list[int] = []
    async for event in feed.follow():
        first_two.append(event.seq)
        if len(first_two) == 2:
            break
    await feed.close()
    async with asyncio.timeout(2):
        assert first_two == [1, 2] and await collect(feed) == [1, 2, 3, 4, 5]


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

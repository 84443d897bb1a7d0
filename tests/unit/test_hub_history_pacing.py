"""A browser's history is paced by what it reads: no more than half of `max_bytes` of it wait
for the browser in the gateway (the rest is room for the live frames after it), a browser
that reads slowly still gets all of it, and one that takes nothing for `stall_s` is dropped."""

from __future__ import annotations

import asyncio

import pytest

from nyxflow_gateway import hub as hub_module
from nyxflow_gateway.hub import Frame, Subscriber, chunk

FRAME_BYTES = 100_000
MAX_BYTES = 300_000


class SlowConnection(asyncio.WriteTransport):
    """A connection whose browser has taken `taken` of the bytes written so far."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.taken = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def get_write_buffer_size(self) -> int:
        return len(self.written) - self.taken

    def is_closing(self) -> bool:
        return False


def history(first: int, count: int) -> list[Frame]:
    body = b"x" * FRAME_BYTES
    return [
        Frame(s, chunk(b"id: %d\ndata: %b\n\n" % (s, body))) for s in range(first, first + count)
    ]


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "ROOM_CHECK_S", 0.01)
    monkeypatch.setattr(hub_module, "MIN_ROOM", 0)


def connected(connection: SlowConnection, history_seq: int) -> Subscriber:
    subscriber = Subscriber(size=4, after_seq=0, history_seq=history_seq, max_bytes=MAX_BYTES)
    subscriber.attach(connection, None)
    subscriber.write_directly(connection)
    return subscriber


async def test_history_beyond_max_bytes_waits_for_a_browser_that_reads_slowly() -> None:
    connection = SlowConnection()
    subscriber = connected(connection, history_seq=10)
    assert not subscriber.offer(history(1, 1))  # 100 KB: room left
    assert subscriber.offer(history(2, 2))  # 300 KB: its channel must wait before the next

    async def browser() -> None:  # 10 KB at a time: draining takes longer than the stall bound
        while connection.get_write_buffer_size() > 0:
            await asyncio.sleep(0.05)
            connection.taken += 10_000

    reading = asyncio.ensure_future(browser())
    assert await subscriber.room(stall_s=0.2)  # progress, however slow, is not a stall
    assert subscriber.unsent() <= MAX_BYTES // 2 and not subscriber.dropped
    reading.cancel()


async def test_a_browser_that_takes_nothing_of_its_history_is_dropped() -> None:
    connection = SlowConnection()
    subscriber = connected(connection, history_seq=10)
    assert subscriber.offer(history(1, 4))
    async with asyncio.timeout(30):  # a hang detector: stall_s is 0.1 s
        assert not await subscriber.room(stall_s=0.1)
    assert subscriber.dropped and subscriber.ended
    assert subscriber.after_seq == 4  # whole frames only: its reconnect resumes after them


async def test_what_waited_in_the_inbox_during_the_backlog_goes_first_and_counts() -> None:
    connection = SlowConnection()
    subscriber = Subscriber(size=4, after_seq=2, history_seq=10, max_bytes=MAX_BYTES)
    subscriber.attach(connection, None)
    subscriber.send(b"".join(f.chunk for f in history(1, 2)))  # the backlog
    assert subscriber.offer(history(3, 2))  # pending: 200 KB, with 200 KB in the connection
    assert subscriber.unsent() == len(connection.written) + 2 * len(history(3, 1)[0].chunk)
    subscriber.write_directly(connection)
    subscriber.offer(history(5, 1))
    sent = connection.written
    assert [sent.index(b"id: %d\n" % s) for s in range(1, 6)] == sorted(
        sent.index(b"id: %d\n" % s) for s in range(1, 6)
    )
    assert subscriber.pending == [] and subscriber.unsent() == len(sent)


async def test_a_slow_reader_paced_through_its_history_takes_the_live_frames_after_it() -> None:
    """Paced up to `max_bytes`, history left the buffer at the brim, and the first live frame
    after it (a 20 KB step output) dropped a browser that had been reading all along."""
    connection = SlowConnection()
    subscriber = connected(connection, history_seq=4)
    assert subscriber.offer(history(1, 4))  # 400 KB of history: its channel waits

    async def browser() -> None:  # reads steadily, 10 KB every 50 ms
        while True:
            await asyncio.sleep(0.05)
            connection.taken = min(len(connection.written), connection.taken + 10_000)

    reading = asyncio.ensure_future(browser())
    try:
        assert await subscriber.room(stall_s=1.0)
        subscriber.offer([Frame(5, chunk(b"id: 5\ndata: %b\n\n" % (b"y" * 20_000)))])
        assert not subscriber.dropped, f"dropped with {subscriber.unsent()} bytes unsent"
    finally:
        reading.cancel()

"""Subscriber: events that arrive together reach a browser together, in order, once each; a
browser too far behind is dropped with no hole before what it was sent."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import cast

import pytest

from nyxflow.client import EngineClient, RunsClient
from nyxflow.errors import Unauthenticated
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway import hub as hub_module
from nyxflow_gateway.deps import Services
from nyxflow_gateway.hub import Frame, RunHub, Subscriber, chunk
from tests.support.eventually import eventually


def frames(first: int, count: int) -> list[Frame]:
    return [Frame(s, chunk(f"id: {s}\n\n".encode())) for s in range(first, first + count)]


class RecordingTransport(asyncio.WriteTransport):
    """Keeps every write; `backed_up` bytes stay "unsent", as with a browser that does not read."""

    def __init__(self, backed_up: bool = False) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.backed_up = backed_up

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.writes)) if self.backed_up else 0

    def is_closing(self) -> bool:
        return False


def seqs(data: bytes) -> list[int]:
    return [int(line[4:]) for line in data.split(b"\r\n") if line.startswith(b"id: ")]


async def test_a_batch_goes_to_the_transport_in_one_write_without_what_was_sent() -> None:
    subscriber = Subscriber(size=8, after_seq=2)
    transport = RecordingTransport()
    subscriber.write_directly(transport)

    subscriber.offer(frames(1, 5))  # 1 and 2 came with the backlog
    subscriber.offer(frames(4, 3))  # 4 and 5 again (a replay overlapping the live tail)
    subscriber.offer(frames(1, 2))  # nothing new: no write at all
    subscriber.offer([])  # an empty batch: nothing either

    assert [seqs(w) for w in transport.writes] == [[3, 4, 5], [6]]
    assert subscriber.after_seq == 6 and not subscriber.ended


async def test_the_batch_joined_once_is_written_as_is_unless_part_was_sent() -> None:
    batch = frames(3, 3)
    joined = b"".join(f.chunk for f in batch)
    current, behind = Subscriber(size=8, after_seq=2), Subscriber(size=8, after_seq=4)
    to_current, to_behind = RecordingTransport(), RecordingTransport()
    current.write_directly(to_current)
    behind.write_directly(to_behind)

    current.offer(batch, joined)
    behind.offer(batch, joined)  # 3 and 4 came with its backlog: the shared bytes would repeat them

    assert to_current.writes == [joined]
    assert [seqs(w) for w in to_behind.writes] == [[5]]


async def test_a_batch_waits_in_pending_for_the_browsers_task() -> None:
    subscriber = Subscriber(size=8, after_seq=0)
    taking = asyncio.create_task(subscriber.take())
    await asyncio.sleep(0)
    subscriber.offer(frames(1, 3))
    subscriber.end()

    taken, ended = await asyncio.wait_for(taking, 2)
    assert [f.seq for f in taken] == [1, 2, 3] and ended
    subscriber.offer(frames(4, 1))  # after the end: nothing
    assert subscriber.pending == []


async def test_a_batch_beyond_the_inbox_keeps_what_fits_then_ends_the_stream() -> None:
    subscriber = Subscriber(size=4, after_seq=0)
    subscriber.offer(frames(1, 3))
    subscriber.offer(frames(4, 3))  # only 4 fits

    assert [f.seq for f in subscriber.pending] == [1, 2, 3, 4]
    assert subscriber.after_seq == 4  # a reconnect resumes after 4: no hole, nothing twice
    assert subscriber.dropped and subscriber.ended


async def test_a_browser_that_does_not_read_is_dropped_by_frames_not_by_writes() -> None:
    subscriber = Subscriber(size=4, after_seq=0)
    transport = RecordingTransport(backed_up=True)
    subscriber.write_directly(transport)

    subscriber.offer(frames(1, 3))
    assert not subscriber.dropped  # 3 frames unsent: within the bound
    subscriber.offer(frames(4, 2))  # 5 unsent, in only two writes
    assert subscriber.dropped and subscriber.ended
    subscriber.offer(frames(6, 1))
    assert len(transport.writes) == 2  # nothing more once dropped


def big_frames(first: int, count: int, size: int) -> list[Frame]:
    return [Frame(s, chunk(b"x" * size)) for s in range(first, first + count)]


async def test_a_browser_that_does_not_read_is_dropped_by_unsent_bytes_too() -> None:
    """Four long results are within 1,000 frames but not within 10 KB unsent."""
    subscriber = Subscriber(size=1000, after_seq=0, max_bytes=10_000)
    transport = RecordingTransport(backed_up=True)
    subscriber.write_directly(transport)

    subscriber.offer(big_frames(1, 2, 4_000))
    assert not subscriber.dropped  # 8 KB unsent
    subscriber.offer(big_frames(3, 1, 4_000))
    assert subscriber.dropped and subscriber.ended
    assert subscriber.after_seq == 3  # written before the drop: a reconnect resumes after it


async def test_a_browsers_history_counts_against_neither_bound() -> None:
    """What the run had written when the browser came goes whole, however it arrives."""
    subscriber = Subscriber(size=4, after_seq=0, history_seq=10, max_bytes=10_000)
    transport = RecordingTransport(backed_up=True)
    subscriber.write_directly(transport)

    subscriber.offer(big_frames(1, 10, 4_000))  # 10 frames, 40 KB: history
    assert not subscriber.dropped
    subscriber.offer(big_frames(11, 1, 100))  # live, and the transport still holds 40 KB
    assert subscriber.dropped


async def test_a_browsers_history_waits_in_pending_outside_the_inbox() -> None:
    subscriber = Subscriber(size=2, after_seq=0, history_seq=5)
    subscriber.offer(frames(1, 5))
    assert not subscriber.dropped and len(subscriber.pending) == 5
    subscriber.offer(frames(6, 3))  # live: only two fit
    assert [f.seq for f in subscriber.pending] == [1, 2, 3, 4, 5, 6, 7]
    assert subscriber.dropped and subscriber.after_seq == 7


async def test_a_channel_the_last_browser_left_is_freed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its frames (a whole run's events) go when the last browser does, by reference
    counting alone, not at the cycle collector's rare full pass."""

    async def quiet_upstream(*_: object) -> AsyncIterator[list[pb.RunEvent]]:
        await asyncio.Event().wait()  # an upstream with nothing more to say
        yield []

    monkeypatch.setattr(hub_module, "upstream", quiet_upstream)
    hub = RunHub(queue_size=8, heartbeat_s=60)
    subscriber = hub.subscribe(cast(Services, None), "run", "running", 0)
    await asyncio.sleep(0)  # the pump is waiting on its upstream
    channel = weakref.ref(hub._channels["run"])
    hub.unsubscribe(subscriber)
    gc.disable()
    try:
        for _ in range(5):  # the cancelled pump finishes
            await asyncio.sleep(0)
        assert channel() is None, "the channel survives in a reference cycle"
    finally:
        gc.enable()
        await hub.close()


def events(first: int, count: int) -> list[pb.RunEvent]:
    return [
        pb.RunEvent(run_id="run", seq=s, type="step_delta", data_json='{"text": "x"}')
        for s in range(first, first + count)
    ]


async def test_a_long_run_keeps_a_bounded_tail_and_a_late_browser_gets_its_own_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 events with 8 kept: the channel holds the last 8 to 10. A browser that joins from
    the start needs what was let go, so it gets its own upstream from its Last-Event-ID; one
    that joins within the tail is served from memory by the shared one."""
    calls: list[tuple[str, int]] = []
    more = asyncio.Event()

    async def fake_upstream(
        _: object, run_id: str, status: str, after_seq: int, __: float
    ) -> AsyncIterator[list[pb.RunEvent]]:
        calls.append((status, after_seq))
        if after_seq == 0 and status == "pending":
            for first in range(1, 41, 4):
                yield events(first, 4)
        else:
            yield events(after_seq + 1, 40 - after_seq)
        await more.wait()  # the run goes on: nothing more yet
        yield []

    monkeypatch.setattr(hub_module, "upstream", fake_upstream)
    hub = RunHub(queue_size=100, heartbeat_s=60, keep_frames=8)
    try:
        first = hub.subscribe(cast(Services, None), "run", "pending", 0)
        await eventually_seq(first, 40)
        shared = hub._channels["run"]
        assert 8 <= len(shared.frames) <= 10 and shared.frames[-1].seq == 40
        assert shared.trimmed == shared.frames[0].seq - 1

        late = hub.subscribe(cast(Services, None), "run", "running", 0)
        assert late.channel is not shared and not late.backlog
        await eventually_seq(late, 40)
        assert calls == [("pending", 0), ("running", 0)]  # watched, never started again
        assert late.channel is not None and late.channel.frames == []  # keeps nothing

        recent = hub.subscribe(cast(Services, None), "run", "running", 36)
        assert recent.channel is shared and [f.seq for f in recent.backlog] == [37, 38, 39, 40]
        assert len(calls) == 2 and hub.upstream_streams == 2

        hub.unsubscribe(late)
        await asyncio.sleep(0)
        assert hub.channels == 1 and late.channel is None
    finally:
        await hub.close()


async def eventually_seq(subscriber: Subscriber, seq: int) -> None:
    """Waits until `subscriber` has been offered everything up to `seq`."""
    for _ in range(100):
        if subscriber.after_seq >= seq:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"offered up to {subscriber.after_seq}, not {seq}")


class TimedTransport(RecordingTransport):
    """Notes when each write came."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, bytes]] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.times.append((time.monotonic(), bytes(data)))


class Stalls:
    """When this loop stalled (a loaded machine, a collection), as a task waking every 10 ms
    sees it: the hub cannot write while the loop stands still, and a silence that long is no
    fault of its own."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    async def watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            after = time.monotonic()
            if after - before > 0.015:
                self.spans.append((before + 0.01, after))

    def within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.spans)


async def test_a_browser_is_never_silent_for_longer_than_the_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event just after a tick made the next tick pass the browser by: nearly two
    intervals of silence, past the idle timeout of a proxy set to the interval."""
    heartbeat_s = 0.4
    stalls = Stalls()
    watching = asyncio.create_task(stalls.watch())

    async def upstream(*_: object) -> AsyncIterator[list[pb.RunEvent]]:
        await asyncio.sleep(heartbeat_s * 1.1)  # just after the first tick of the old ticker
        yield [pb.RunEvent(run_id="run", seq=1, type="step_delta", data_json="{}")]
        await asyncio.Event().wait()  # then nothing, for ever
        yield []

    monkeypatch.setattr(hub_module, "upstream", upstream)
    hub = RunHub(queue_size=8, heartbeat_s=heartbeat_s)
    try:
        subscriber = hub.subscribe(cast(Services, None), "run", "running", 0)
        transport = TimedTransport()
        subscriber.write_directly(transport)
        await eventually(
            lambda: asyncio.sleep(0, len(transport.times)),
            lambda n: n >= 5,
            what="the event and four heartbeats written",
        )
        times = [at for at, _ in transport.times]
        assert any(b"id: 1" in data for _, data in transport.times)
        # Each silence less the loop's stalls within it: a stalled machine fails no hub.
        silences = [b - a - stalls.within(a, b) for a, b in itertools.pairwise(times)]
        assert max(silences) <= heartbeat_s * 1.1, (silences, stalls.spans)
    finally:
        watching.cancel()
        await hub.close()


async def test_a_run_of_long_results_keeps_a_tail_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 events of 10 KB with 5,000 kept by count: a bound in events alone let a run of long
    results hold hundreds of MB. 64 KB kept: the channel holds the last 4 to 6 of them."""
    more = asyncio.Event()

    async def fake_upstream(*_: object) -> AsyncIterator[list[pb.RunEvent]]:
        for seq in range(1, 41):
            text = json.dumps({"text": "x" * 10_000})
            yield [pb.RunEvent(run_id="run", seq=seq, type="step_completed", data_json=text)]
        await more.wait()
        yield []

    monkeypatch.setattr(hub_module, "upstream", fake_upstream)
    hub = RunHub(queue_size=100, heartbeat_s=60, keep_frames=5000, keep_bytes=64 * 1024)
    try:
        first = hub.subscribe(cast(Services, None), "run", "pending", 0)
        await eventually_seq(first, 40)
        shared = hub._channels["run"]
        assert shared.frames[-1].seq == 40
        assert 4 <= len(shared.frames) <= 6
        assert shared.kept_bytes == sum(len(f.chunk) for f in shared.frames) <= 64 * 1024
        assert shared.trimmed == shared.frames[0].seq - 1
        late = hub.subscribe(cast(Services, None), "run", "running", 0)
        assert late.channel is not shared  # what was let go comes from its own stream
    finally:
        await hub.close()


class KeyRuns:
    """A key's stand-in for runs: GetRun answers until the key is revoked."""

    def __init__(self) -> None:
        self.revoked = False
        self.calls = 0

    async def get_run(self, run_id: str, *, brief: bool = False) -> pb.Run:
        self.calls += 1
        if self.revoked:
            raise Unauthenticated("invalid API key")
        return pb.Run(id=run_id)


def key() -> tuple[Services, KeyRuns]:
    runs = KeyRuns()
    return Services(cast(RunsClient, runs), cast(EngineClient, None)), runs


async def test_a_revoked_keys_browsers_end_with_one_check_per_key_and_no_other_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five browsers of one key over two runs cost one check per interval; once it is revoked
    they end, without what was pending for them, and the other key's browsers go on."""

    async def quiet_upstream(*_: object) -> AsyncIterator[list[pb.RunEvent]]:
        await asyncio.Event().wait()
        yield []

    monkeypatch.setattr(hub_module, "upstream", quiet_upstream)
    leaked, leaked_runs = key()
    kept, kept_runs = key()
    hub = RunHub(queue_size=8, heartbeat_s=60, key_check_s=0.05)
    try:
        revoked = [hub.subscribe(leaked, f"run-{i % 2}", "running", 0) for i in range(5)]
        others = [hub.subscribe(kept, f"run-{i % 2}", "running", 0) for i in range(2)]
        revoked[0].offer(frames(1, 2))  # waiting for its task: never sent once revoked
        started = time.monotonic()
        await eventually(
            lambda: asyncio.sleep(0, leaked_runs.calls), lambda n: n >= 3, interval_s=0.01
        )
        # One call an interval (0.05 s), however long a loaded machine made this wait; one a
        # browser or a run would make several.
        intervals = (time.monotonic() - started) / 0.05
        assert leaked_runs.calls <= 1 + intervals, (leaked_runs.calls, intervals)
        assert kept_runs.calls == leaked_runs.calls
        assert not any(s.ended for s in revoked + others)

        leaked_runs.revoked = True
        await eventually(
            lambda: asyncio.sleep(0, revoked),
            lambda subs: all(s.refused and s.ended for s in subs),
            what="the revoked key's browsers ended",
        )
        assert await revoked[0].take() == ([], True)
        assert not any(s.ended for s in others)
    finally:
        await hub.close()


async def test_an_upstream_whose_key_is_revoked_goes_on_with_another_browsers_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first browser's key opened the upstream; refused, the channel opens it again with
    another browser's key, from the last event: no gap, nothing twice, no second start."""
    leaked, _ = key()
    kept, _ = key()
    calls: list[tuple[Services, str, int]] = []

    async def fake_upstream(
        services: Services, _: str, status: str, after_seq: int, __: float
    ) -> AsyncIterator[list[pb.RunEvent]]:
        calls.append((services, status, after_seq))
        if services is leaked:
            yield events(1, 3)
            raise Unauthenticated("the API key was revoked or has expired")
        yield events(after_seq + 1, 6 - after_seq)
        await asyncio.Event().wait()
        yield []

    monkeypatch.setattr(hub_module, "upstream", fake_upstream)
    hub = RunHub(queue_size=100, heartbeat_s=60, key_check_s=60)
    try:
        first = hub.subscribe(leaked, "run", "pending", 0)
        other = hub.subscribe(kept, "run", "pending", 0)
        await eventually_seq(other, 6)
        taken, _ = await other.take()
        assert [f.seq for f in taken] == [1, 2, 3, 4, 5, 6]
        assert first.refused and first.ended and not other.ended
        assert calls == [(leaked, "pending", 0), (kept, "running", 3)]
        assert hub.upstream_streams == 1
    finally:
        await hub.close()

"""Stream batches: every event once, in order, each batch within its size bound."""

from __future__ import annotations

from nyxflow.batches import batched
from nyxflow.v1 import common_pb2 as pb


def event(seq: int, size: int = 10) -> pb.RunEvent:
    return pb.RunEvent(run_id="r", seq=seq, type="step_delta", data_json="x" * size)


def test_small_events_go_in_one_batch() -> None:
    out = list(batched([event(s) for s in range(1, 6)]))
    assert [[e.seq for e in b.events] for b in out] == [[1, 2, 3, 4, 5]]


def test_batches_split_at_the_byte_bound_and_keep_the_order() -> None:
    events = [event(s, 400) for s in range(1, 11)]
    out = list(batched(events, max_bytes=1000))
    assert [e.seq for b in out for e in b.events] == list(range(1, 11))
    assert all(sum(e.ByteSize() for e in b.events) <= 1000 for b in out)
    assert len(out) == 5  # two ~410-byte events fit in 1,000 bytes, three do not


def test_an_event_larger_than_the_bound_goes_alone() -> None:
    out = list(batched([event(1), event(2, 5000), event(3)], max_bytes=1000))
    assert [[e.seq for e in b.events] for b in out] == [[1], [2], [3]]


def test_nothing_makes_no_batch() -> None:
    assert list(batched([])) == []

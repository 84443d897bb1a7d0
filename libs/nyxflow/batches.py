"""Events as stream messages: consecutive events of a run in `RunEventBatch`es of bounded size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from nyxflow.v1 import common_pb2 as pb

# Well under the channels' 32 MiB message limit: a replay of large step outputs goes in
# several messages rather than one that a client must hold whole.
MAX_BATCH_BYTES = 1 << 20


def batched(
    events: Iterable[pb.RunEvent], max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[pb.RunEventBatch]:
    """`events` in order, as few batches as fit in `max_bytes` each (an event larger than
    that goes alone)."""
    batch: list[pb.RunEvent] = []
    size = 0
    for event in events:
        n = event.ByteSize()
        if batch and size + n > max_bytes:
            yield pb.RunEventBatch(events=batch)
            batch, size = [], 0
        batch.append(event)
        size += n
    if batch:
        yield pb.RunEventBatch(events=batch)

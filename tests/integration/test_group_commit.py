"""The engine's writes against the real runs service: concurrent writes of one run share
calls, writes of many runs share one RecordMany, and a failed batch fails every write it
carried (none returns as if committed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from nyxflow import events as ev
from nyxflow.auth import Metadata, internal_metadata
from nyxflow.client import RunsClient
from nyxflow.errors import InvalidArgument, Unavailable
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.committer import Committer, Waiting
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.writer import LeaseLost, RunWriter, draft
from tests.integration.test_runs_invariants import claimed
from tests.support.inprocess import SECRET, Clients, clients


class CountingCommitter(Committer):
    """The real committer, noting each RecordMany it sends: its batches' op counts."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, SECRET, 10.0)
        self.calls: list[list[int]] = []

    async def _send(self, runs: RunsClient, group: list[Waiting]) -> None:
        self.calls.append([len(request.ops) for request, _ in group])
        await super()._send(runs, group)


@pytest.fixture
async def api(runs_addr: str) -> AsyncIterator[Clients]:
    async with clients(runs_addr) as c:
        yield c


def writer_for(api: Clients, committer: Committer, run: pb.Run, token: int) -> RunWriter:
    runs = RunsClient(api.runs_channel, internal_metadata(SECRET, run.tenant_id))
    return RunWriter(runs, committer, run.tenant_id, run.id, token, RunFeed(), retry_s=5.0)


def item(step_id: str, index: int) -> tuple[str, pb.StepItem, pb.EventDraft]:
    return (
        step_id,
        pb.StepItem(index=index, heading=f"h{index}", output=f"out {index}"),
        draft(ev.FAN_OUT_PROGRESS, step_id=step_id, index=index),
    )


async def complete_first_step(writer: RunWriter, run: pb.Run) -> None:
    step = run.steps[0]
    change = runs_pb2.StepChange(status=ev.COMPLETED, output=f"done {run.id}")
    await writer.step(step.id, change, draft(ev.STEP_COMPLETED, step_id=step.id), durable=True)


async def test_concurrent_items_of_a_run_share_calls(api: Clients) -> None:
    _, run, token = await claimed(api)
    committer = CountingCommitter(api.runs_channel)
    writer = writer_for(api, committer, run, token)
    step_id = run.steps[0].id

    await asyncio.gather(*(writer.item(*item(step_id, i)) for i in range(16)))

    # The first goes alone; the fifteen that queued behind it go together (an item and its
    # event each).
    assert committer.calls == [[2], [30]]
    stored = await api.runs.get_run(run.id)
    assert [i.index for i in stored.steps[0].items] == list(range(16))
    assert stored.last_seq == 1 + 16


async def test_writes_of_many_runs_share_one_call(api: Clients) -> None:
    committer = CountingCommitter(api.runs_channel)
    claims = [await claimed(api, name=f"many-{i}") for i in range(6)]
    writers = [writer_for(api, committer, run, token) for _, run, token in claims]

    await asyncio.gather(
        *(complete_first_step(w, run) for w, (_, run, _) in zip(writers, claims, strict=True))
    )

    assert committer.calls == [[2] * 6]  # all six runs' batches in one RecordMany
    for _, run, _ in claims:
        stored = await api.runs.get_run(run.id)
        assert stored.steps[0].status == ev.COMPLETED
        assert stored.steps[0].output == f"done {run.id}"


async def test_more_writes_waiting_than_runs_takes_in_a_call_go_in_several(
    api: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs refuses a call of more batches than it takes, whole: every run waiting in such a
    group failed. (The limit is lowered on both ends, as 1,000 runs would be.)"""
    monkeypatch.setattr("nyxflow_engine.committer.MAX_RECORD_GROUP", 5)
    monkeypatch.setattr("nyxflow_runs.servicer.MAX_GROUP", 5)
    committer = CountingCommitter(api.runs_channel)
    claims = [await claimed(api, name=f"crowd-{i}") for i in range(12)]
    writers = [writer_for(api, committer, run, token) for _, run, token in claims]

    await asyncio.gather(
        *(complete_first_step(w, run) for w, (_, run, _) in zip(writers, claims, strict=True))
    )

    sizes = [len(call) for call in committer.calls]
    assert max(sizes) == 5 and sum(sizes) == 12, sizes
    for _, run, _ in claims:
        assert (await api.runs.get_run(run.id)).steps[0].status == ev.COMPLETED


async def test_large_writes_of_several_runs_go_in_calls_a_message_holds(api: Clients) -> None:
    """Two runs that each wrote a result of 17 MiB at once were sent in one message of 34 MiB,
    over the 32 a message holds: both failed, though each alone fits."""
    committer = CountingCommitter(api.runs_channel)
    claims = [await claimed(api, name=f"large-{i}") for i in range(2)]
    writers = [writer_for(api, committer, run, token) for _, run, token in claims]
    big = "x" * (17 << 20)

    async def complete(writer: RunWriter, run: pb.Run) -> None:
        step = run.steps[0]
        change = runs_pb2.StepChange(status=ev.COMPLETED, output=big)
        await writer.step(step.id, change, draft(ev.STEP_COMPLETED, step_id=step.id), durable=True)

    await asyncio.gather(
        *(complete(w, run) for w, (_, run, _) in zip(writers, claims, strict=True))
    )

    assert [len(call) for call in committer.calls] == [1, 1]
    for _, run, _ in claims:
        assert len((await api.runs.get_run(run.id)).steps[0].output) == len(big)


async def test_a_write_no_message_holds_fails_its_run_saying_so(api: Clients) -> None:
    committer = CountingCommitter(api.runs_channel)
    _, run, token = await claimed(api, name="huge")
    writer = writer_for(api, committer, run, token)
    step = run.steps[0]
    change = runs_pb2.StepChange(status=ev.COMPLETED, output="x" * (33 << 20))

    with pytest.raises(InvalidArgument, match="more than a message holds"):
        await writer.step(step.id, change, draft(ev.STEP_COMPLETED, step_id=step.id), durable=True)


async def test_a_failed_batch_fails_every_write_it_carried(api: Clients) -> None:
    _, run, token = await claimed(api)
    committer = CountingCommitter(api.runs_channel)
    writer = writer_for(api, committer, run, token)
    step_id = run.steps[0].id
    await api.runs.cancel_run(run.id)  # the lease is gone: every batch is refused

    outcomes = await asyncio.gather(
        *(writer.item(*item(step_id, i)) for i in range(8)), return_exceptions=True
    )

    assert all(isinstance(o, LeaseLost) for o in outcomes), outcomes
    assert committer.calls == [[2], [14]]
    assert (await api.runs.get_run(run.id)).steps[0].items == []


class SlowCommitter(Committer):
    """The real committer, each RecordMany sent a moment late."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, SECRET, 10.0)
        self.sent = asyncio.Event()

    async def _send(self, runs: RunsClient, group: list[Waiting]) -> None:
        self.sent.set()
        await asyncio.sleep(0.2)
        await super()._send(runs, group)


async def test_a_write_cancelled_in_flight_still_reaches_the_feed_in_order(api: Clients) -> None:
    """A fan-out item cancelled (a sibling failed) while its batch is on its way: the batch
    commits all the same, so its events must reach the feed before the next batch's, or
    every Execute follower skips their seqs for good."""
    _, run, token = await claimed(api)
    committer = SlowCommitter(api.runs_channel)
    writer = writer_for(api, committer, run, token)
    step_id = run.steps[0].id

    first = asyncio.create_task(writer.item(*item(step_id, 0)))
    await asyncio.wait_for(committer.sent.wait(), 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await writer.item(*item(step_id, 1))
    await writer.feed.close()

    seqs = [e.seq async for e in writer.feed.follow()]
    assert seqs == [2, 3]
    stored = await api.runs.get_run(run.id)
    assert [i.index for i in stored.steps[0].items] == [0, 1]


class FailingFirstCommitter(Committer):
    """The real committer, but its first batch fails as if runs could not be reached."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, SECRET, 10.0)
        self.failed = False

    async def record(
        self, tenant_id: str, request: runs_pb2.RecordRequest
    ) -> runs_pb2.WriteResponse:
        if not self.failed:
            self.failed = True
            raise Unavailable("runs is away")
        return await super().record(tenant_id, request)


async def test_a_failed_background_commit_still_lets_the_run_end_be_recorded(
    api: Clients,
) -> None:
    """The group commit's timer failed; every later write re-raises that, as it should, but
    the run's end must still go, with the error, or the run is swept as an orphan."""
    _, run, token = await claimed(api)
    runs = RunsClient(api.runs_channel, internal_metadata(SECRET, run.tenant_id))
    committer = FailingFirstCommitter(api.runs_channel)
    writer = RunWriter(
        runs, committer, run.tenant_id, run.id, token, RunFeed(), retry_s=0.01, group_commit_s=0
    )
    writer.events(draft(ev.STEP_DELTA, step_id=run.steps[0].id, text="x"))
    await asyncio.sleep(0.1)  # the timer's flush fails
    with pytest.raises(Unavailable):
        writer.events(draft(ev.STEP_DELTA, step_id=run.steps[0].id, text="y"))

    await writer.finish(ev.FAILED, "runs is away")

    stored = await api.runs.get_run(run.id)
    assert (stored.status, stored.error) == (ev.FAILED, "runs is away")


def ended(step_id: str, input_tokens: int) -> runs_pb2.WriteOp:
    change = runs_pb2.StepChange(status=ev.COMPLETED, output="x", input_tokens=input_tokens)
    return runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step_id, change=change))


async def test_a_count_beyond_its_column_costs_only_its_own_batch(api: Clients) -> None:
    """Token counts are int64 in the message and int32 in the column: on PostgreSQL the one
    batch's value failed the whole group's statement, every other run's batch with it."""
    engine, good, good_token = await claimed(api, name="good")
    _, bad, bad_token = await claimed(api, name="bad")
    good_op, bad_op = ended(good.steps[0].id, 5), ended(bad.steps[0].id, 2**31)
    response = await engine.record_many(
        [
            runs_pb2.RecordRequest(run_id=good.id, token=good_token, ops=[good_op]),
            runs_pb2.RecordRequest(run_id=bad.id, token=bad_token, ops=[bad_op]),
        ]
    )
    assert response.results[0].HasField("written")
    refused = response.results[1]
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.field == "batches[1].ops[0].step.change.input_tokens"
    assert (await api.runs.get_run(good.id)).steps[0].status == ev.COMPLETED
    untouched = await api.runs.get_run(bad.id)
    assert untouched.steps[0].status == ev.PENDING
    assert untouched.steps[0].input_tokens == 0


class SlowGeneration(RunsClient):
    """The real client, each GenerateSteps sent a moment late."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata) -> None:
        super().__init__(channel, metadata)
        self.sent = asyncio.Event()

    async def generate_steps(
        self,
        run_id: str,
        token: int,
        after_step_id: str,
        steps: Sequence[pb.StepSpec],
        events: Sequence[pb.EventDraft] = (),
    ) -> runs_pb2.WriteResponse:
        self.sent.set()
        await asyncio.sleep(0.2)
        return await super().generate_steps(run_id, token, after_step_id, steps, events)


async def test_a_generation_cancelled_in_flight_still_reaches_the_feed_in_order(
    api: Clients,
) -> None:
    """A drain cancels the run while its generated steps are on their way: they commit all
    the same, and their event went missing from every Execute follower's stream."""
    _, run, token = await claimed(api)
    runs = SlowGeneration(api.runs_channel, internal_metadata(SECRET, run.tenant_id))
    committer = Committer(api.runs_channel, SECRET, 10.0)
    writer = RunWriter(runs, committer, run.tenant_id, run.id, token, RunFeed(), retry_s=5.0)
    spec = pb.StepSpec(name="Generated", kind="implementation_prompt", prompt="p")

    generating = asyncio.create_task(
        writer.generate(run.steps[0].id, [spec], draft(ev.STEPS_GENERATED, count=1))
    )
    await asyncio.wait_for(runs.sent.wait(), 5)
    generating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await generating
    writer.events(draft(ev.STEP_DELTA, text="next"))
    await writer.flush()
    await writer.feed.close()

    events = [e async for e in writer.feed.follow()]
    assert [(e.seq, e.type) for e in events] == [(2, ev.STEPS_GENERATED), (3, ev.STEP_DELTA)]
    stored = await api.runs.get_run(run.id)
    assert "Generated" in [s.name for s in stored.steps]


async def test_single_writes_refuse_counts_beyond_their_column(api: Clients) -> None:
    """UpdateStep and PutStepItem are batches of one: the same bounds, named by field."""
    engine, run, token = await claimed(api, name="single")
    step = run.steps[0]
    too_many = runs_pb2.StepChange(status=ev.COMPLETED, output="x", output_tokens=2**31)
    with pytest.raises(InvalidArgument) as refused:
        await engine.update_step(run.id, token, step.id, too_many)
    assert refused.value.field == "change.output_tokens"
    with pytest.raises(InvalidArgument) as refused:
        await engine.put_step_item(run.id, token, step.id, pb.StepItem(index=0, input_tokens=-1))
    assert refused.value.field == "item.input_tokens"
    stored = await api.runs.get_run(run.id)
    assert stored.last_seq == 1 and stored.steps[0].status == ev.PENDING
    assert list(stored.steps[0].items) == []

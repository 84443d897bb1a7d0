"""Long answers, up to the 20 MiB of steps' outputs a run's read holds, are stored whole.

A run's last write once carried a long output three times (the step's own, step_completed's
`output` with every non-ASCII character JSON-escaped to 6 or 12 bytes, the last delta) in one
Record call: past the 32 MiB a message holds, the run failed and the paid-for answer was lost.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import grpc

from nyxflow import events as ev
from nyxflow.auth import internal_metadata
from nyxflow.client import RunsClient
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.committer import Committer
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.writer import RunWriter, draft
from tests.integration.test_runs_invariants import claimed
from tests.support.fake_providers import FakeProviders, Reply
from tests.support.inprocess import SECRET, Clients, clients, engine_service
from tests.support.provider_runs import KEYS, of_type, run_steps, step

# The longest output step_completed carries, in characters (execution.EVENT_OUTPUT_CHARS).
EVENT_OUTPUT_CHARS = 1 << 20
# About 19.7 MB of UTF-8, under the README's 20 MiB: CJK (3 bytes a character), an emoji
# (4 bytes, two UTF-16 units) and a line end in every line, ending unlike it begins.
LINE = "日本語の長い回答です、絵文字も 😀 含みます。\n"
LONG_ANSWER = LINE * (19_700_000 // len(LINE.encode())) + "THE END"


@contextlib.asynccontextmanager
async def engine_with_defaults(runs_addr: str, base_url: str) -> AsyncIterator[Clients]:
    """An engine on the fake providers with its own delta flushing (DELTA_FLUSH_MS)."""
    async with (
        engine_service(
            runs_addr,
            **KEYS,
            openai_base_url=f"{base_url}/v1",
            provider_backoff_s=0.01,
            provider_backoff_max_s=0.05,
        ) as engine,
        clients(runs_addr, engine.engine_listen) as c,
    ):
        yield c


async def test_a_twenty_megabyte_answer_of_any_script_is_stored_whole(
    runs_addr: str, fake: FakeProviders
) -> None:
    fake.script("openai", Reply(text=LONG_ANSWER, chunk=1 << 17, delay_s=0.002))
    async with engine_with_defaults(runs_addr, fake.base_url) as api:
        run, events = await run_steps(api, step("Long", ["openai:m"]))
        assert run.status == ev.COMPLETED, run.error
        got = await api.runs.get_step(run.steps[0].id)

    assert got.output.encode() == LONG_ANSWER.encode()  # byte for byte
    assert "".join(d["text"] for d in of_type(events, ev.STEP_DELTA)) == LONG_ANSWER
    # Its event says where the output is, rather than carrying it a third time.
    (completed,) = of_type(events, ev.STEP_COMPLETED)
    assert completed["output_left_out"] is True and "output" not in completed


async def test_an_output_up_to_the_events_bound_still_comes_with_its_event(
    fake_api: Clients, fake: FakeProviders
) -> None:
    answer = "é" * EVENT_OUTPUT_CHARS  # at the bound, in characters
    fake.script("openai", Reply(text=answer, chunk=1 << 16))

    run, events = await run_steps(fake_api, step("At the bound", ["openai:m"]))

    assert run.status == ev.COMPLETED, run.error
    (completed,) = of_type(events, ev.STEP_COMPLETED)
    assert completed["output"] == answer and "output_left_out" not in completed


class NotingFeed(RunFeed):
    """The events fed to the run's followers, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[pb.RunEvent] = []

    async def extend(self, events: Sequence[pb.RunEvent]) -> None:
        self.seen.extend(events)
        await super().extend(events)


class NotingCommitter(Committer):
    """The real committer, noting each batch it is given: its op count and the run's end."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, SECRET, 30.0)
        self.batches: list[tuple[int, str]] = []

    async def record(
        self, tenant_id: str, request: runs_pb2.RecordRequest
    ) -> runs_pb2.WriteResponse:
        self.batches.append((len(request.ops), request.finish_status))
        return await super().record(tenant_id, request)


async def test_a_flush_no_message_holds_goes_in_batches_in_order(runs_addr: str) -> None:
    """A long answer streamed in one piece: its delta and its result, with the run's end, are
    36 MiB in one flush. Sent in two batches, in order, the result with its event and the end."""
    async with clients(runs_addr) as api:
        _, run, token = await claimed(api, steps=1, name="split")
        runs = RunsClient(api.runs_channel, internal_metadata(SECRET, run.tenant_id))
        committer, feed = NotingCommitter(api.runs_channel), NotingFeed()
        writer = RunWriter(runs, committer, run.tenant_id, run.id, token, feed, retry_s=5.0)
        step_id = run.steps[0].id
        big = "x" * (18 << 20)

        writer.events(draft(ev.STEP_DELTA, step_id=step_id, text=big))
        change = runs_pb2.StepChange(status=ev.COMPLETED, output=big)
        done = draft(ev.STEP_COMPLETED, step_id=step_id, output_left_out=True)
        await writer.step(step_id, change, done)
        await writer.finish(ev.COMPLETED)

        # The whole was refused before runs applied any of it; then its parts went.
        assert committer.batches == [(3, ev.COMPLETED), (1, ""), (2, ev.COMPLETED)]
        stored = await api.runs.get_run(run.id)
        assert stored.status == ev.COMPLETED
        assert (await api.runs.get_step(step_id)).output == big
        fed = [(e.type, e.seq) for e in feed.seen][-3:]
        assert [t for t, _ in fed] == [ev.STEP_DELTA, ev.STEP_COMPLETED, ev.RUN_COMPLETED]
        assert [s for _, s in fed] == sorted(s for _, s in fed)
        delta = next(e for e in feed.seen if e.type == ev.STEP_DELTA)
        assert json.loads(delta.data_json)["text"] == big

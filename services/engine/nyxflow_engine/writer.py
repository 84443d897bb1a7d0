"""Every write of one run execution to runs, group-committed.

Progress (a step started, streamed text) is batched and committed within `group_commit_s`;
what would cost work if lost (a step's result, a fan-out item, the end of the run) is
committed before the execution moves on. Every batch is one Record call, fenced by the
claim's token, retried while runs is unavailable, and fed to the run's followers in seq order.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from nyxflow.client import RunsClient
from nyxflow.errors import NotFound, StaleToken
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.committer import GROUP_BYTES, Committer, TooBig
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.retrying import while_unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# What each part of a flush that no message holds may weigh (see `_split`): one Record holding
# a long answer twice (the step's output, its last delta) was past the 32 MiB a message holds.
BATCH_BYTES = GROUP_BYTES
# A JSON-escaped NUL (\u0000) not itself after an escaped backslash (\\u0000 is text).
_ESCAPED_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


class LeaseLost(Exception):
    """Our claim is no longer current (swept, cancelled or reclaimed): stop without writing."""


def draft(type_: str, **data: Any) -> pb.EventDraft:
    """An event of `data`, whose strings hold what `scrub` leaves of them: NUL as U+FFFD, as
    in the step's stored output, so that the deltas join to it (scrub sees no escaped NUL)."""
    # Not ASCII-escaped: a CJK character weighs 3 bytes, not 6 (an emoji 4, not 12).
    text = json.dumps(data, ensure_ascii=False)
    if "\\u0000" in text:
        text = _ESCAPED_NUL.sub("\\1\ufffd", text)
    try:
        return pb.EventDraft(type=type_, data_json=text)
    except UnicodeEncodeError:  # a lone surrogate (half an emoji), which no UTF-8 holds
        whole = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return pb.EventDraft(type=type_, data_json=whole)


def scrub(message: Message) -> None:
    """Model and tool output may hold NUL, which PostgreSQL text cannot store: it would fail
    the write and with it the run. Replace it, in place, in every string of the message."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            if field.is_repeated:
                value[:] = [v.replace("\x00", "\ufffd") for v in value]
            elif "\x00" in value:
                setattr(message, field.name, value.replace("\x00", "\ufffd"))
        elif field.type == field.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                continue  # no maps in what the engine writes; leave them be
            for item in value if field.is_repeated else [value]:
                scrub(item)


async def _to_the_end(write: Coroutine[Any, Any, T]) -> T:
    """A write on its way when its caller is cancelled (a fan-out sibling failed, a drain) may
    commit all the same: it is seen to its end, still under the writer's lock, so its events
    reach the feed before the next write's, or every follower would skip their seqs."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # seen: the caller is told of its cancellation
        raise
    finally:
        # A failed task keeps its error, whose traceback holds this frame: holding the task
        # too, the cycle kept the run's execution until a full collection.
        del task


def _event_ops(drafts: Sequence[pb.EventDraft]) -> list[runs_pb2.WriteOp]:
    return [runs_pb2.WriteOp(event=d) for d in drafts]


def _split(ops: list[runs_pb2.WriteOp], groups: list[int]) -> list[list[runs_pb2.WriteOp]]:
    """`ops` in parts of whole groups (see RunWriter._groups), in order, each part under
    BATCH_BYTES unless one group alone is over it: that group goes alone."""
    parts: list[list[runs_pb2.WriteOp]] = [[]]
    size, start = 0, 0
    for count in groups:
        group = ops[start : start + count]
        start += count
        weight = sum(op.ByteSize() for op in group)
        if parts[-1] and size + weight > BATCH_BYTES:
            parts.append([])
            size = 0
        parts[-1].extend(group)
        size += weight
    return parts


class RunWriter:
    def __init__(
        self,
        runs: RunsClient,
        committer: Committer,
        tenant_id: str,
        run_id: str,
        token: int,
        feed: RunFeed,
        retry_s: float,
        group_commit_s: float = 0.05,
    ) -> None:
        self.runs = runs
        self._committer = committer
        self._tenant_id = tenant_id
        self.run_id = run_id
        self.token = token
        self.feed = feed
        self.pause_requested = False  # set by runs on any write's answer
        # Set as the run's end (or release) is sent: from then on, a heartbeat refused because
        # the run is no longer running says only that the end landed; the end's own answer
        # tells whether it was ours.
        self.ending = False
        self._retry_s = retry_s
        self._group_commit_s = group_commit_s
        self._pending: list[runs_pb2.WriteOp] = []
        # How many ops each deferral added, in order: a split flush keeps each one's ops (a
        # step's result and its events) in one batch, applied together or not at all.
        self._groups: list[int] = []
        # Ops deferred and ops committed, counted since the start: a flush whose ops another
        # flush already carried returns without a call of its own (see `flush`).
        self._deferred = 0
        self._committed = 0
        self._lost: tuple[int, Exception] | None = None  # ops up to here went in a failed batch
        self._timer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # The last batch's number: 1, 2, 3 … for this claim's token. Runs applies none at or
        # below the last it applied, so a first attempt that reaches it after its retry and
        # the batches after it (waiting for a connection, say) cannot apply a second time.
        self._batch_seq = 0
        # One batch in flight at a time, so seqs reach the feed in order.
        self._lock = asyncio.Lock()

    # --- what the execution calls ------------------------------------------------------

    def events(self, *drafts: pb.EventDraft) -> None:
        self._defer(_event_ops(drafts))

    async def step(
        self,
        step_id: str,
        change: runs_pb2.StepChange,
        *drafts: pb.EventDraft,
        durable: bool = False,
    ) -> None:
        write = runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step_id, change=change))
        self._defer([write, *_event_ops(drafts)])
        if durable:
            await self.flush()

    async def item(self, step_id: str, item: pb.StepItem, *drafts: pb.EventDraft) -> None:
        """A finished fan-out item is committed before the next one counts on it."""
        write = runs_pb2.WriteOp(item=runs_pb2.ItemWrite(step_id=step_id, item=item))
        self._defer([write, *_event_ops(drafts)])
        await self.flush()

    async def generate(
        self, after_step_id: str, specs: Sequence[pb.StepSpec], *drafts: pb.EventDraft
    ) -> None:
        await self.flush()
        for spec in specs:
            scrub(spec)

        async def generate() -> None:
            response = await self._retrying(
                lambda: self.runs.generate_steps(
                    self.run_id, self.token, after_step_id, specs, drafts
                )
            )
            await self._absorb(response)

        async with self._lock:
            await _to_the_end(generate())

    async def save_artifacts(
        self, step_id: str, artifacts: Sequence[pb.Artifact], findings: Sequence[pb.Finding]
    ) -> None:
        """Durable before the step completes, fenced by the token like every write."""
        await self.flush()
        for message in [*artifacts, *findings]:
            scrub(message)
        await self._retrying(
            lambda: self.runs.save_artifacts(self.run_id, self.token, step_id, artifacts, findings)
        )

    async def finish(self, status: str, error: str = "") -> None:
        self.ending = True
        # A background commit that failed fails every later write, but not the end: it is a
        # batch of its own, and without it the run would be swept as an orphan, its error lost.
        self._failure = None
        # A provider's message may hold NUL, as model output may (see `scrub`): refused, the
        # end would never be recorded, and the run swept as an orphan, its error lost.
        await self.flush(status, error.replace("\x00", "\ufffd"))

    async def release(self, reason: str) -> str:
        """Let go of the run (the engine is draining): runs hands it to another replica or
        pauses it, by the workflow's policy; the status it chose is returned."""
        await self.flush()
        self.ending = True

        async def release() -> str:
            response = await self._retrying(
                lambda: self.runs.release_run(self.run_id, self.token, reason)
            )
            await self._absorb(response.written)
            return response.status

        async with self._lock:
            return await _to_the_end(release())

    async def heartbeat(self, ttl_s: float, timeout_s: float) -> None:
        """One renewal, bounded by `timeout_s`. Not retried here: the next heartbeat is the
        retry, on a schedule that a backoff would stretch past a short lease."""
        try:
            await self.runs.heartbeat(self.run_id, self.token, ttl_s, timeout_s)
        except (StaleToken, NotFound) as error:
            # NotFound: the run is no longer its tenant's (ended, then its project moved or
            # its workflow deleted). Taken for a passing failure, the step ran on to its end.
            raise LeaseLost(str(error)) from None

    async def current_steps(self) -> list[pb.Step]:
        run = await self._retrying(lambda: self.runs.get_run(self.run_id))
        steps = list(run.steps)
        await self.fill_left_out(steps)
        return steps

    async def fill_left_out(self, steps: Sequence[pb.Step]) -> None:
        """The outputs a whole read left out past its budget (Step.output_left_out), read
        step by step: a later prompt, a check or a resumed synthesis reads them."""
        await self._retrying(lambda: self.runs.fill_left_out_steps(steps))

    async def stored_items(self, step_id: str, from_index: int = 0) -> list[pb.StepItem]:
        """A step's stored items from `from_index` on, outputs included: a whole run's read
        leaves outputs out past its budget (StepItem.output_left_out)."""
        return await self._retrying(
            functools.partial(self.runs.all_step_items, self.run_id, step_id, from_index)
        )

    async def workflow(self, workflow_id: str) -> pb.Workflow:
        return await self._retrying(lambda: self.runs.get_workflow(workflow_id))

    async def flush(self, finish_status: str = "", finish_error: str = "") -> None:
        """Commit everything deferred so far (and end the run, if asked).

        Concurrent flushes (a fan-out's items) share calls: each batch carries all that is
        pending when it goes, and a flush whose ops went in an earlier batch only waits for
        it. Without that, items would queue one call each behind the lock."""
        self._raise_failure()
        target = self._deferred
        async with self._lock:
            if not finish_status and self._committed >= target:
                return
            if not finish_status and self._lost is not None and self._lost[0] >= target:
                raise self._lost[1]  # the batch that carried our ops failed
            ops, self._pending = self._pending, []
            groups, self._groups = self._groups, []
            taken = self._deferred
            if not ops and not finish_status:
                return
            for op in ops:
                scrub(op)
            await _to_the_end(self._commit(ops, groups, taken, finish_status, finish_error))

    async def _commit(
        self,
        ops: list[runs_pb2.WriteOp],
        groups: list[int],
        taken: int,
        finish_status: str,
        finish_error: str,
    ) -> None:
        """`ops` (and the end, if asked) as one batch; one that a message cannot hold (a long
        answer's output and its last delta) in parts, each a batch of its own. Nothing is
        measured unless it was refused: a write that fits pays nothing for those that do not."""
        try:
            try:
                response = await self._record(ops, finish_status, finish_error)
            except TooBig:
                parts = _split(ops, groups)
                if len(parts) == 1:
                    raise  # one group alone: no split takes it
                response = await self._record_parts(parts, taken, finish_status, finish_error)
        except Exception as error:
            self._lost = (taken, error)  # its ops are lost: so is every flush that counted on them
            raise
        self._committed = taken
        await self._absorb(response)

    async def _record(
        self, ops: list[runs_pb2.WriteOp], finish_status: str = "", finish_error: str = ""
    ) -> runs_pb2.WriteResponse:
        self._batch_seq += 1
        request = runs_pb2.RecordRequest(
            run_id=self.run_id,
            token=self.token,
            ops=ops,
            finish_status=finish_status,
            finish_error=finish_error,
            batch_id=uuid.uuid4().hex,  # the same across retries: applied once at most
            batch_seq=self._batch_seq,
        )
        return await self._retrying(lambda: self._committer.record(self._tenant_id, request))

    async def _record_parts(
        self, parts: list[list[runs_pb2.WriteOp]], taken: int, finish_status: str, finish_error: str
    ) -> runs_pb2.WriteResponse:
        """The parts in order, each applied (and its events fed) before the next goes, the end
        in the last; the last's answer is returned. The refused whole was applied nowhere."""
        committed = taken - sum(len(part) for part in parts)
        for part in parts[:-1]:
            response = await self._record(part)
            committed += len(part)
            self._committed = committed
            await self._absorb(response)
        return await self._record(parts[-1], finish_status, finish_error)

    # --- group commit -----------------------------------------------------------------

    def _defer(self, ops: list[runs_pb2.WriteOp]) -> None:
        self._raise_failure()
        self._pending.extend(ops)
        self._groups.append(len(ops))
        self._deferred += len(ops)
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_soon(), name=f"commit-{self.run_id}")

    async def _flush_soon(self) -> None:
        # Ops deferred while this timer's own commit is in flight found it running and started
        # none of their own: they go in the next round here, not whenever the next write comes.
        while True:
            await asyncio.sleep(self._group_commit_s)
            try:
                await self.flush()
            except Exception as error:  # the execution sees it at its next write
                self._failure = error
                return
            if not self._pending:
                return

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        # Let go of the timer as it is cancelled: its CancelledError's traceback holds this
        # writer, so a writer still holding it would stay, with the run's events and their
        # protobuf arenas, until the cycle collector's rare full pass (about 1.7 KB a run).
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        # The same for the failures kept for the next write: their tracebacks hold this writer.
        self._failure, self._lost = None, None

    async def _absorb(self, response: runs_pb2.WriteResponse) -> None:
        self.pause_requested = self.pause_requested or response.pause_requested
        await self.feed.extend(response.events)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await while_unavailable(call, self._retry_s, self.run_id)
        except StaleToken as error:
            raise LeaseLost(str(error)) from None

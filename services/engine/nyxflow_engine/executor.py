"""Claims runs and owns their executions for the life of the engine process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence

import grpc

from nyxflow.auth import Metadata, internal_metadata
from nyxflow.client import RunsClient
from nyxflow.errors import FailedPrecondition, NyxflowError, Unavailable
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.committer import Committer
from nyxflow_engine.execution import Execution
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.providers.registry import Providers
from nyxflow_engine.retrying import while_unavailable
from nyxflow_engine.settings import EngineSettings
from nyxflow_engine.writer import RunWriter

log = logging.getLogger(__name__)


class Executor:
    def __init__(
        self, channel: grpc.aio.Channel, settings: EngineSettings, providers: Providers
    ) -> None:
        self._channel = channel
        self._settings = settings
        self._providers = providers
        self._executions: dict[str, Execution] = {}
        self._starting: set[asyncio.Task[RunFeed]] = set()  # held: the loop keeps weak refs
        self._draining = False
        self._committer = Committer(channel, settings.internal_secret, settings.rpc_timeout_s)

    @property
    def active(self) -> int:
        return len(self._executions)

    async def start(self, run_id: str, caller: Metadata) -> RunFeed:
        """Claim `run_id` with the caller's credentials and start it; FAILED_PRECONDITION if
        the run is not pending or another caller won the claim."""
        if self._draining:
            # A run claimed now would be neither paused nor handed over: the drain's list of
            # executions is taken. UNAVAILABLE: the caller starts it elsewhere, or later.
            raise Unavailable("engine is shutting down; start the run on another replica")
        # A caller that goes away (the last browser left) cancels its Execute call; were the
        # claim cancelled with it, a claim already committed would leave the run `running`
        # with no execution until it is swept as an orphan. The claim and the start finish
        # whatever the caller does.
        starting = asyncio.create_task(self._claim_and_start(run_id, caller))
        self._starting.add(starting)
        starting.add_done_callback(self._starting.discard)
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_unfollowed)  # no one will take its feed
            raise

    def runs_as(self, caller: Metadata) -> RunsClient:
        """runs, called with `caller`'s credentials (runs decides who the tenant is)."""
        return RunsClient(self._channel, caller, self._settings.rpc_timeout_s)

    async def _claim_and_start(self, run_id: str, caller: Metadata) -> RunFeed:
        settings = self._settings
        # The claim goes with the caller's credentials (NOT_FOUND for a run not theirs);
        # every write after it goes as the engine, for the run's tenant.
        claimant = self.runs_as(caller)
        # One id for this attempt: a claim that committed but whose answer was lost is won
        # again by its retry instead of leaving the run `running` with no execution.
        claim_id = uuid.uuid4().hex
        claim = await while_unavailable(
            lambda: claimant.claim_run(run_id, settings.engine_id, settings.lease_ttl_s, claim_id),
            settings.write_retry_s,
            run_id,
        )
        if not claim.won:
            raise FailedPrecondition(f"run {run_id} is {claim.run.status}, not pending")
        runs = RunsClient(
            self._channel,
            internal_metadata(settings.internal_secret, claim.run.tenant_id),
            settings.rpc_timeout_s,
        )
        feed = RunFeed()
        events: Sequence[pb.RunEvent] = claim.events
        if claim.earlier_left_out:
            events = await with_earlier(runs, run_id, events, settings.rpc_timeout_s)
        await feed.extend(events)
        writer = RunWriter(
            runs,
            self._committer,
            claim.run.tenant_id,
            run_id,
            claim.token,
            feed,
            settings.write_retry_s,
            settings.group_commit_ms / 1000,
        )
        execution = Execution(writer, claim.run, settings, self._providers)
        self._executions[run_id] = execution
        execution.start().add_done_callback(lambda _: self._finished(run_id, execution))
        log.info("run claimed", extra={"run_id": run_id, "token": claim.token})
        return feed

    def _finished(self, run_id: str, execution: Execution) -> None:
        # Only if it is still this run's: a run swept from a stalled execution and adopted
        # again by this engine has a new one under the same id, which the drain must see.
        if self._executions.get(run_id) is execution:
            del self._executions[run_id]
        # A cancelled task's CancelledError holds the execution through its traceback:
        # no reference back, so that both go by reference counting, not at a full pass.
        execution.task = None

    async def adopt(self, run_id: str, tenant_id: str) -> RunFeed:
        """Claim a requeued run as the engine itself (no caller is waiting on it)."""
        caller = internal_metadata(self._settings.internal_secret, tenant_id)
        feed = await self.start(run_id, caller)
        feed.unfollow()  # no caller waits on it: its events are runs' alone
        return feed

    async def drain(self, grace_s: float) -> None:
        """On shutdown: pause every run we hold and wait (bounded) for them to record it."""
        self._draining = True
        # One grace for the whole drain: each wait had its own, and the engine outlived it.
        deadline = asyncio.get_running_loop().time() + grace_s
        if self._starting:  # a claim on its way becomes an execution, paused with the rest
            await asyncio.wait(set(self._starting), timeout=grace_s)
        executions = list(self._executions.values())
        for execution in executions:
            execution.pause()
        tasks = [e.task for e in executions if e.task is not None]
        if tasks:
            await asyncio.wait(
                tasks, timeout=max(0.0, deadline - asyncio.get_running_loop().time())
            )


def _unfollowed(starting: asyncio.Task[RunFeed]) -> None:
    """A start its caller left: the run goes on, with no one to follow its feed."""
    if not starting.cancelled() and starting.exception() is None:
        starting.result().unfollow()


async def with_earlier(
    runs: RunsClient, run_id: str, events: Sequence[pb.RunEvent], timeout_s: float
) -> Sequence[pb.RunEvent]:
    """The claim's answer left out events between its first ones and the start (a requeued
    run's megabytes, past its budget): read from the stored stream, so that Execute's caller
    gets every event from the first. Failing that, it gets what the answer held, and a
    follower that minds the gap reads it from the stored stream itself."""
    *given, started = events
    rest: list[pb.RunEvent] = []
    try:
        async with asyncio.timeout(timeout_s):
            stream = runs.watch_run(run_id, given[-1].seq if given else 0)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    if event.seq >= started.seq:
                        break
                    rest.append(event)
    except (NyxflowError, TimeoutError) as error:
        log.warning("earlier events not read: %s", error, extra={"run_id": run_id})
        return events
    return [*given, *rest, started]

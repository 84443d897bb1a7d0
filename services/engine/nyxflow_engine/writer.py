"""Every write of one run execution to runs: fenced by the claim's token, retried while runs is
unavailable, and fed to the run's followers in seq order."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from nyxflow.client import RunsClient
from nyxflow.errors import StaleToken, Unavailable
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.feed import RunFeed

log = logging.getLogger(__name__)
T = TypeVar("T")


class LeaseLost(Exception):
    """Our claim is no longer current (swept, cancelled or reclaimed): stop without writing."""


def draft(type_: str, **data: Any) -> pb.EventDraft:
    return pb.EventDraft(type=type_, data_json=json.dumps(data))


class RunWriter:
    def __init__(
        self, runs: RunsClient, run_id: str, token: int, feed: RunFeed, retry_s: float
    ) -> None:
        self.runs = runs
        self.run_id = run_id
        self.token = token
        self.feed = feed
        self.pause_requested = False  # set by runs on any write's answer
        self._retry_s = retry_s
        # Writes of one run go out one at a time, so seqs reach the feed in order.
        self._lock = asyncio.Lock()

    async def _write(self, call: Callable[[], Awaitable[runs_pb2.WriteResponse]]) -> None:
        async with self._lock:
            response = await self._retrying(call)
            self.pause_requested = self.pause_requested or response.pause_requested
            await self.feed.extend(response.events)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self._retry_s
        delay = 0.1
        while True:
            try:
                return await call()
            except StaleToken as error:
                raise LeaseLost(str(error)) from None
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("runs unavailable, retrying", extra={"run_id": self.run_id})
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    async def events(self, *drafts: pb.EventDraft) -> None:
        await self._write(lambda: self.runs.append_events(self.run_id, self.token, drafts))

    async def step(self, step_id: str, change: runs_pb2.StepChange, *drafts: pb.EventDraft) -> None:
        await self._write(
            lambda: self.runs.update_step(self.run_id, self.token, step_id, change, drafts)
        )

    async def item(self, step_id: str, item: pb.StepItem, *drafts: pb.EventDraft) -> None:
        await self._write(
            lambda: self.runs.put_step_item(self.run_id, self.token, step_id, item, drafts)
        )

    async def generate(
        self, after_step_id: str, specs: Sequence[pb.StepSpec], *drafts: pb.EventDraft
    ) -> None:
        await self._write(
            lambda: self.runs.generate_steps(self.run_id, self.token, after_step_id, specs, drafts)
        )

    async def finish(self, status: str, error: str = "") -> None:
        await self._write(lambda: self.runs.finish_run(self.run_id, self.token, status, error))

    async def heartbeat(self, ttl_s: float) -> None:
        await self._retrying(lambda: self.runs.heartbeat(self.run_id, self.token, ttl_s))

    async def current_steps(self) -> list[pb.Step]:
        run = await self._retrying(lambda: self.runs.get_run(self.run_id))
        return list(run.steps)

    async def workflow(self, workflow_id: str) -> pb.Workflow:
        return await self._retrying(lambda: self.runs.get_workflow(workflow_id))

"""A finished run's writer goes the moment the run does, by reference counting alone: an
engine that runs for weeks must not keep runs' events until the cycle collector's rare full
pass."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import cast

import grpc

from nyxflow.client import RunsClient
from nyxflow_engine.committer import Committer
from nyxflow_engine.feed import RunFeed
from nyxflow_engine.writer import RunWriter, draft


async def test_a_closed_writer_with_a_pending_commit_timer_is_freed_at_once() -> None:
    committer = Committer(cast(grpc.aio.Channel, None), "secret", 1.0)  # never called
    writer = RunWriter(
        cast(RunsClient, None), committer, "tenant", "run", 1, RunFeed(), 1.0, group_commit_s=60
    )
    writer.events(draft("step_delta", text="x"))  # progress: starts the group-commit timer
    await asyncio.sleep(0)  # the timer is asleep in its task
    await writer.close()
    freed = weakref.ref(writer)
    del writer
    gc.disable()
    try:
        for _ in range(5):  # the cancelled timer's task finishes
            await asyncio.sleep(0)
        assert freed() is None, "the writer survives in a reference cycle"
    finally:
        gc.enable()

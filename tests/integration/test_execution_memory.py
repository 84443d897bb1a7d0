"""An execution stopped from outside (cancelled, its lease lost, the engine draining) goes the
moment it ends, by reference counting alone: its cancelled task's traceback holds it, and a
task still held by the execution would keep both, and the run's steps, until the cycle
collector's rare full pass."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref

import pytest

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.execution import Execution
from tests.support.eventually import eventually
from tests.support.inprocess import Clients, clients, engine_service
from tests.support.workflows import llm_step


def _executions() -> list[Execution]:
    return [o for o in gc.get_objects() if isinstance(o, Execution)]


SHAPES = {
    # (the steps, the event the caller leaves at: the step is in flight)
    "llm": ([llm_step("long", "x", tokens=200, token_delay_ms=20)], ev.STEP_DELTA),
    "fan_out": (
        [
            llm_step("Topics", "x", items=6, tokens=12),
            pb.StepSpec(
                name="Each",
                kind="fan_out",
                prompt="{{ item }}",
                source="Topics",
                concurrency=2,
                params_json=json.dumps({"tokens": 100, "token_delay_ms": 20}),
            ),
        ],
        ev.FAN_OUT_PROGRESS,
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_a_cancelled_execution_is_freed_without_the_collector(
    runs_addr: str, shape: str
) -> None:
    # A lease far longer than a full collection of a long suite's heap takes: the collection
    # blocks this loop, heartbeats included, and a short lease was swept before the cancel.
    async with (
        engine_service(runs_addr, lease_ttl_s=120.0) as engine,
        clients(runs_addr, engine.engine_listen) as api,
    ):
        await _cancel_and_watch_it_go(api, *SHAPES[shape])


async def _cancel_and_watch_it_go(api: Clients, steps: list[pb.StepSpec], at: str) -> None:
    assert api.engine is not None
    run = await _started_then_left(api, "freed", steps, at)
    gc.collect()
    (execution,) = [e for e in _executions() if e.run_id == run.id]
    freed = weakref.ref(execution)
    del execution
    gc.disable()
    try:
        # Cancelled: its heartbeat's lease is refused and the engine cancels the task.
        await api.runs.cancel_run(run.id)
        await eventually(lambda: _ended(freed), bool, timeout_s=10, what="the execution ended")
        for _ in range(5):
            await asyncio.sleep(0)
        assert freed() is None, "the execution survives in a reference cycle"
    finally:
        gc.enable()


async def _ended(freed: weakref.ref[Execution]) -> bool:
    execution = freed()
    return execution is None or (execution.task is None or execution.task.done())


async def test_a_run_its_caller_left_keeps_none_of_its_events(runs_addr: str) -> None:
    """The caller that started the run stops following (the browser left): the run goes on,
    and its events, runs' to replay, are no longer held by the engine. They were, deltas
    and all, to the run's end."""
    async with (
        engine_service(runs_addr) as engine,
        clients(runs_addr, engine.engine_listen) as api,
    ):
        assert api.engine is not None
        steps = [llm_step(n, "x", tokens=30, token_delay_ms=5) for n in ("a", "b")]
        run = await _started_then_left(api, "left", steps)
        (execution,) = [e for e in _executions() if e.run_id == run.id]
        feed = execution.writer.feed
        del execution
        done = await eventually(
            lambda: api.runs.get_run(run.id, brief=True),
            lambda r: r.status in ev.FINISHED_RUN_STATUSES,
            timeout_s=20,
            what="the run finished",
        )

        assert done.status == ev.COMPLETED
        assert feed.held == 0
        replayed = [e async for e in api.runs.watch_run(run.id)]
        assert [e.seq for e in replayed] == list(range(1, len(replayed) + 1))  # runs has all
        assert replayed[-1].type == ev.RUN_COMPLETED


async def _started_then_left(
    api: Clients, name: str, steps: list[pb.StepSpec], at: str = ev.STEP_DELTA
) -> pb.Run:
    """A run started through Execute, whose caller leaves at the first event of type `at`."""
    assert api.engine is not None
    workflow = await api.runs.create_workflow(name, steps)
    run = await api.runs.create_run(workflow.id)
    events = api.engine.execute(run.id)
    async for event in events:
        if event.type == at:
            break
    await events.aclose()
    return run

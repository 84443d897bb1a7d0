"""cancel_and_wait swallows the cancellation it caused, never the caller's own."""

from __future__ import annotations

import asyncio

import pytest

from nyxflow.tasks import cancel_and_wait


async def _slow_to_stop(stopping: asyncio.Event) -> None:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        stopping.set()
        await asyncio.sleep(0.2)  # cleans up before it goes
        raise


async def test_the_task_is_cancelled_and_its_cancellation_swallowed() -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_caller_cancelled_while_it_waits_stays_cancelled() -> None:
    stopping = asyncio.Event()
    carried_on = asyncio.Event()
    inner = asyncio.create_task(_slow_to_stop(stopping))
    await asyncio.sleep(0)

    async def closes() -> None:
        await cancel_and_wait(inner)
        carried_on.set()
        await asyncio.sleep(60)  # a caller that carried on would wait here for ever

    outer = asyncio.create_task(closes())
    await asyncio.wait_for(stopping.wait(), 5)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 5)
    assert not carried_on.is_set()


async def test_a_caller_cleaning_up_after_its_own_cancellation_goes_on() -> None:
    cleaned = asyncio.Event()
    inner = asyncio.create_task(asyncio.sleep(60))

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await cancel_and_wait(inner)
            cleaned.set()

    outer = asyncio.create_task(cleans_up())
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner.cancelled()
    assert cleaned.is_set()


async def test_a_task_that_failed_raises_its_error() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)

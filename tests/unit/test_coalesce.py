"""Coalescer: asks that overlap share one call; none outlives it; one asker leaving costs the
others nothing; a failure reaches every asker."""

from __future__ import annotations

import asyncio

import pytest

from nyxflow.errors import NotFound
from nyxflow_gateway.coalesce import Coalescer


class Source:
    """Counts its calls; each answers when `release` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def status(self, run_id: str) -> str:
        self.calls += 1
        await self.release.wait()
        return f"{run_id}: call {self.calls}"


async def test_overlapping_asks_for_one_key_share_one_call_and_none_outlives_it() -> None:
    source, coalescer = Source(), Coalescer[str]()
    asks = [
        asyncio.ensure_future(coalescer.get("r1", lambda: source.status("r1"))) for _ in range(50)
    ]
    other = asyncio.ensure_future(coalescer.get("r2", lambda: source.status("r2")))
    await asyncio.sleep(0)
    source.release.set()

    assert set(await asyncio.gather(*asks)) == {"r1: call 1"}
    assert await other == "r2: call 2"
    assert coalescer.in_flight == 0
    # The call returned: the next ask is a fresh one, not the old answer.
    assert await coalescer.get("r1", lambda: source.status("r1")) == "r1: call 3"


async def test_an_asker_that_leaves_does_not_cancel_the_call_for_the_others() -> None:
    source, coalescer = Source(), Coalescer[str]()
    first = asyncio.ensure_future(coalescer.get("r", lambda: source.status("r")))
    second = asyncio.ensure_future(coalescer.get("r", lambda: source.status("r")))
    await asyncio.sleep(0)
    first.cancel()  # the browser that made the call went away
    await asyncio.sleep(0)
    source.release.set()

    assert await second == "r: call 1"
    assert first.cancelled() and source.calls == 1


async def test_a_failure_reaches_every_asker_and_the_next_ask_tries_again() -> None:
    coalescer, calls = Coalescer[str](), []

    async def missing() -> str:
        calls.append(1)
        await asyncio.sleep(0)
        raise NotFound("run r not found", field="run_id")

    results = await asyncio.gather(
        *(coalescer.get("r", missing) for _ in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [NotFound] * 3 and len(calls) == 1
    with pytest.raises(NotFound):
        await coalescer.get("r", missing)
    assert len(calls) == 2 and coalescer.in_flight == 0

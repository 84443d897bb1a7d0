"""A channel whose last browser left is let go, frames and all, and so is the browser (its
transport, its key's clients), also when the gateway then goes idle. The hub's heartbeat and
key-check loops kept their loop variables bound across their sleeps: with no channel left to
visit, the last channel (up to keep_bytes of frames) and browser stayed in memory."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import cast

import pytest

from nyxflow.client import EngineClient, RunsClient
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway import hub as hub_module
from nyxflow_gateway.deps import Services
from nyxflow_gateway.hub import RunHub

BIG = "x" * (1 << 20)  # a 1 MiB output: the channel keeps it for late joiners


class KeyRuns:
    async def get_run(self, run_id: str, *, brief: bool = False) -> pb.Run:
        return pb.Run(id=run_id)


async def test_a_left_channel_and_its_browser_are_freed_when_the_gateway_goes_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fake_upstream(
        _: object, run_id: str, status: str, after_seq: int, __: float
    ) -> AsyncIterator[list[pb.RunEvent]]:
        yield [
            pb.RunEvent(run_id=run_id, seq=s, type="step_completed", data_json=f'{{"o":"{BIG}"}}')
            for s in range(1, 9)
        ]
        await asyncio.Event().wait()  # the run goes on
        yield []

    monkeypatch.setattr(hub_module, "upstream", fake_upstream)
    services = Services(cast(RunsClient, KeyRuns()), cast(EngineClient, None))
    hub = RunHub(queue_size=100, heartbeat_s=0.05, key_check_s=0.05)
    try:
        subscriber = hub.subscribe(services, "run", "running", 0)
        channel = subscriber.channel
        assert channel is not None
        for _ in range(50):
            if len(channel.frames) == 8:
                break
            await asyncio.sleep(0.01)
        assert channel.kept_bytes > 8 << 20  # 8 MiB kept for late joiners
        await asyncio.sleep(0.2)  # both loops have visited it
        gone_channel, gone_subscriber = weakref.ref(channel), weakref.ref(subscriber)
        del channel
        hub.unsubscribe(subscriber)  # the last browser leaves: the gateway is idle
        del subscriber
        await asyncio.sleep(0.5)  # many ticks and key checks later
        gc.collect()

        assert hub.channels == 0
        assert gone_channel() is None, "the left channel (8 MiB of frames) is still in memory"
        assert gone_subscriber() is None, "the left browser is still in memory"
    finally:
        await hub.close()

"""A cancel while a step's provider call streams hangs up on the provider, rather than
leaving it streaming (and billing) to the answer's end. The OpenAI adapter read the SDK's
stream without closing it, and Gemini's SDK leaves each response to the collector, so a cancel,
a lost lease, a drain or a stall kept the connection open until a collection happened by (in
this test, with the collector off, to the end of a 15 s answer). Anthropic's closed already."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from tests.support import provider_wire as wire
from tests.support.provider_runs import engine_on_fake, step

PIECES = 300
GAP_S = 0.05  # 15 s of answer in all


class SlowProvider:
    """A raw HTTP server streaming one provider's answer slowly; it notes when the client
    hung up, and whether it did before the answer was all sent."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.closed_early: asyncio.Event = asyncio.Event()
        self.finished = asyncio.Event()
        self.requests = 0
        self.server: asyncio.Server | None = None

    def frames(self) -> list[bytes]:
        pieces = [f"w{i} " for i in range(PIECES)]
        if self.provider == "anthropic":
            return wire.anthropic(pieces)
        if self.provider == "openai":
            return wire.openai(pieces)
        last = len(pieces) - 1
        return [wire.gemini_chunk(p, "STOP" if i == last else None) for i, p in enumerate(pieces)]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        if length:
            await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        gone = asyncio.ensure_future(reader.read(1))  # b"" once the client hangs up
        try:
            for frame in self.frames():
                writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                await writer.drain()
                done, _ = await asyncio.wait({gone}, timeout=GAP_S)
                if done:
                    self.closed_early.set()
                    return
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            self.finished.set()
        except (ConnectionError, OSError):
            self.closed_early.set()
        finally:
            gone.cancel()
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("provider", ["anthropic", "openai", "google"])
async def test_cancel_closes_the_providers_stream(runs_addr: str, provider: str) -> None:
    slow = SlowProvider(provider)
    # What hangs up must be the adapter, not a collector pass that happens to come by.
    gc.disable()
    try:
        await _cancel_mid_stream(runs_addr, provider, slow)
    finally:
        gc.enable()


async def _cancel_mid_stream(runs_addr: str, provider: str, slow: SlowProvider) -> None:
    async with slow as base_url, engine_on_fake(runs_addr, base_url) as api:
        assert api.engine is not None
        workflow = await api.runs.create_workflow("slow", [step("s0", [provider])])
        run = await api.runs.create_run(workflow.id)
        seen: list[pb.RunEvent] = []

        async def execute() -> None:
            assert api.engine is not None
            async for event in api.engine.execute(run.id):
                seen.append(event)

        task = asyncio.create_task(execute())
        async with asyncio.timeout(20):
            while not any(e.type == ev.STEP_DELTA for e in seen):
                await asyncio.sleep(0.01)
        await api.runs.cancel_run(run.id)
        cancelled_at = time.monotonic()
        async with asyncio.timeout(30):
            await task  # the engine stopped writing
        # The provider's connection: hung up by the engine, well before the 15 s answer ends.
        waiter = asyncio.ensure_future(slow.closed_early.wait())
        ended = asyncio.ensure_future(slow.finished.wait())
        await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
        waiter.cancel()
        ended.cancel()
        assert slow.closed_early.is_set(), (
            f"{provider}: the engine kept reading the provider's stream "
            f"{time.monotonic() - cancelled_at:.1f} s after the cancel, to its end"
        )
        assert (await api.runs.get_run(run.id)).status == ev.CANCELLED

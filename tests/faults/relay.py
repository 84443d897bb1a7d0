"""A TCP relay a test can cut silently: the connections it carries stop passing bytes but stay
open (no FIN, no RST), as across a NAT or load balancer that forgot them, or to a host that
vanished; connections made afterwards pass again."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.ports import free_port

CHUNK = 65536


@dataclass
class Relay:
    target_port: int
    port: int = field(default_factory=free_port)
    _cut: set[asyncio.Event] = field(default_factory=set)  # one per live connection
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Every connection open now goes silent for good; new ones pass."""

        def silence() -> None:
            for silenced in self._cut:
                silenced.set()

        self._loop.call_soon_threadsafe(silence)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        silenced = asyncio.Event()
        self._cut.add(silenced)
        pumps = [
            asyncio.create_task(_pump(reader, up_writer, silenced)),
            asyncio.create_task(_pump(up_reader, writer, silenced)),
        ]
        # Either side closing (or failing) closes both, as on a direct connection.
        _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        if silenced.is_set():  # held open, saying nothing, until the relay closes
            await asyncio.Event().wait()
        self._cut.discard(silenced)
        for pump in pending:
            pump.cancel()
        for w in (writer, up_writer):
            w.close()


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, silenced: asyncio.Event
) -> None:
    while not silenced.is_set():
        data = await source.read(CHUNK)
        if silenced.is_set():
            return
        if not data:
            return
        sink.write(data)
        await sink.drain()


@contextlib.contextmanager
def relay_to(target_port: int) -> Iterator[Relay]:
    """The relay, served by a thread of its own: the processes it carries for go on while the
    test's loop is busy (starting a stack blocks it)."""
    relay = Relay(target_port)
    loop = relay._loop
    started = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(relay._accept, "127.0.0.1", relay.port)
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    main = loop.create_task(serve())

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield relay
    finally:
        loop.call_soon_threadsafe(main.cancel)
        thread.join(10)
        loop.close()

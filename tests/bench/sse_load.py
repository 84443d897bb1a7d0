"""Many SSE clients on raw sockets, spread over worker processes.

One process reading a thousand sockets is itself the bottleneck: when a hundred clients get
the same event at once, the last line read waits behind the other ninety-nine, and that wait
would be measured as the gateway's latency. Workers on their own event loops (uvloop) keep the
load generator out of the figure."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)
    connected: int = 0
    finished: int = 0


END_TYPES = (b'"type": "run_completed"', b'"type": "run_failed"')


class _Follower(asyncio.Protocol):
    """One SSE client, parsing in `data_received` with bytes operations only: a thousand
    clients on asyncio streams (a readline and a json.loads per line) cost the machine more
    CPU than the gateway they measure. The gateway puts `"at"` last in every event's data."""

    def __init__(self, request: bytes, out: Latencies, done: asyncio.Future[None]) -> None:
        self.request, self.out, self.done = request, out, done
        self.rest = b""
        self.connected_at: float | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.rest + data
        if self.connected_at is None:
            head, sep, buffer = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.rest = head
                return
            self.out.connected += 1
            self.connected_at = time.time()
        lines = buffer.split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            if not line.startswith(b"data: "):
                continue  # id, event, chunk sizes, comments
            at = float(line[line.rindex(b'"at": ') + 6 : -1])
            if at >= self.connected_at:  # live events only: a replay's age is not latency
                self.out.samples.append(now - at)
            if any(end in line for end in END_TYPES):
                self.out.finished += 1
                self._finish()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()


async def follow(host: str, port: int, path: str, key: str, out: Latencies) -> None:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    await loop.create_connection(lambda: _Follower(request, out, done), host, port)
    await done


@dataclass(frozen=True)
class Followers:
    """One worker's share: the paths its clients follow."""

    host: str
    port: int
    paths: list[str]
    key: str


def _follow_all(job: Followers) -> tuple[list[float], int, int, float]:
    """In a worker process: (latency samples, connected, finished, seconds to connect all).

    The collector stays off: these clients make no garbage cycles, and a full collection of
    the worker's heap (up to 200 ms, measured) would be counted as the gateway's latency."""
    import uvloop

    gc.freeze()
    gc.disable()

    async def run() -> tuple[list[float], int, int, float]:
        out = Latencies()
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(follow(job.host, job.port, path, job.key, out))
            for path in job.paths
        ]
        while out.connected < len(tasks) and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        connected_s = time.perf_counter() - started
        await asyncio.gather(*tasks, return_exceptions=True)
        return out.samples, out.connected, out.finished, connected_s

    return uvloop.run(run())


async def follow_in_workers(
    host: str, port: int, paths: list[str], key: str, workers: int
) -> tuple[Latencies, float]:
    """Every path followed by one client, the clients dealt across `workers` processes."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC
    jobs = [Followers(host, port, paths[w::workers], key) for w in range(workers)]
    out = Latencies()
    connected_s = 0.0
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = await asyncio.gather(*(loop.run_in_executor(pool, _follow_all, j) for j in jobs))
    for samples, connected, finished, seconds in results:
        out.samples += samples
        out.connected += connected
        out.finished += finished
        connected_s = max(connected_s, seconds)
    return out, connected_s


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

"""Many SSE clients on raw sockets (cheap enough that the clients do not dominate the CPU)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)
    connected: int = 0
    finished: int = 0


async def follow(host: str, port: int, path: str, key: str, out: Latencies) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    out.connected += 1
    connected_at = time.time()
    try:
        while line := await reader.readline():
            if not line.startswith(b"data: "):
                continue
            now = time.time()
            data = json.loads(line[6:])
            at = float(data["at"])
            if at >= connected_at:  # live events only: a replay's age is not latency
                out.samples.append(now - at)
            if data.get("type") in ("run_completed", "run_failed"):
                out.finished += 1
                return
    finally:
        writer.close()


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

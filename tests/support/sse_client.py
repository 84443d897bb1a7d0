"""A small SSE reader over real HTTP, to check exactly what a browser would receive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def seq(self) -> int:
        assert self.id is not None
        return int(self.id)

    @property
    def json(self) -> dict[str, Any]:
        assert self.data is not None
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Parse the stream per the SSE spec: blank line ends a frame; multi-line data joined."""
    frame = Frame()
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                frame.data = "\n".join(data)
            if frame.data is not None or frame.retry is not None or frame.comments:
                yield frame
            frame, data = Frame(), []
            continue
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "retry":
            frame.retry = int(value)


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    *,
    limit: int | None = None,
) -> list[Frame]:
    """Every event frame until the server closes the stream (or `limit` events)."""
    events: list[Frame] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for frame in frames(response):
            if frame.event is None:
                continue
            events.append(frame)
            if limit is not None and len(events) >= limit:
                break
    return events

"""Server-sent events framing (the WHATWG event-stream format)."""

from __future__ import annotations


def event_frame(seq: int, event: str, data: str) -> str:
    """`id`, `event` and one `data:` line per line of data: browsers drop an event without
    data, and a bare newline inside data would end the frame early."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "".join(f"data: {line}\n" for line in lines)
    return f"id: {seq}\nevent: {_single_line(event)}\n{body}\n"


def retry_frame(milliseconds: int) -> str:
    return f"retry: {int(milliseconds)}\n\n"


def comment_frame(text: str = "keepalive") -> str:
    return f": {_single_line(text)}\n\n"


def _single_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")

"""The SSE frame encoder: what a browser's EventSource parser reads back is what we meant."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from nyxflow.sse import comment_frame, event_frame, retry_frame


@dataclass
class Parsed:
    events: list[dict[str, str]] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


def parse(stream: str) -> Parsed:
    """The WHATWG event-stream algorithm: an event is dispatched at a blank line, and only
    if it had a data line; comments and retry are not events."""
    out = Parsed()
    fields: dict[str, str] = {}
    data: list[str] | None = None
    for line in stream.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if data is not None:
                out.events.append({**fields, "data": "\n".join(data)})
            fields, data = {}, None
            continue
        if line.startswith(":"):
            out.comments.append(line[1:].removeprefix(" "))
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data = [*(data or []), value]
        elif name == "retry" and value.isdigit():
            out.retry = int(value)
        elif name in ("id", "event"):
            fields[name] = value
    return out


def test_event_frame_has_id_event_and_data_and_ends_with_a_blank_line() -> None:
    frame = event_frame(7, "step_started", '{"seq": 7}')
    assert frame == 'id: 7\nevent: step_started\ndata: {"seq": 7}\n\n'
    assert parse(frame).events == [{"id": "7", "event": "step_started", "data": '{"seq": 7}'}]


@pytest.mark.parametrize(
    "data",
    [
        "line one\nline two",
        "windows\r\nline\r\nends",
        "old mac\rline",
        "trailing newline\n",
        "\n\nleading blank lines",
        "",
    ],
)
def test_multi_line_data_is_one_data_line_each_and_survives_parsing(data: str) -> None:
    frame = event_frame(1, "step_delta", data)
    # A bare newline inside data would end the frame early and lose the rest.
    assert frame.endswith("\n\n") and "\n\n" not in frame[:-2]
    assert all(
        line.startswith(("id: ", "event: ", "data: ")) or line == "data:"
        for line in frame[:-2].split("\n")
    ), frame
    normalised = data.replace("\r\n", "\n").replace("\r", "\n")
    assert parse(frame).events == [{"id": "1", "event": "step_delta", "data": normalised}]


def test_every_event_has_a_data_line_even_when_empty() -> None:
    frame = event_frame(3, "run_started", "")
    # Browsers drop an event without one: it would never reach the page's listener.
    assert parse(frame).events == [{"id": "3", "event": "run_started", "data": ""}]


def test_json_payload_round_trips_with_embedded_newlines() -> None:
    payload = {"seq": 2, "type": "step_delta", "text": "a\nb\r\nc", "run_id": "r"}
    frame = event_frame(2, "step_delta", json.dumps(payload, indent=2))
    assert json.loads(parse(frame).events[0]["data"]) == payload


def test_event_name_cannot_break_the_frame() -> None:
    frame = event_frame(4, "evil\ndata: injected", "{}")
    parsed = parse(frame).events
    assert len(parsed) == 1 and parsed[0]["data"] == "{}"
    assert "\n" not in parsed[0]["event"]


def test_retry_frame() -> None:
    assert retry_frame(3000) == "retry: 3000\n\n"
    parsed = parse(retry_frame(1500))
    assert parsed.retry == 1500 and parsed.events == []


def test_comment_frame_is_a_heartbeat_not_an_event() -> None:
    assert comment_frame() == ": keepalive\n\n"
    assert comment_frame("hello\nworld") == ": hello world\n\n"
    parsed = parse(comment_frame() + event_frame(1, "x", "{}") + comment_frame())
    assert parsed.comments == ["keepalive", "keepalive"]
    assert parsed.events == [{"id": "1", "event": "x", "data": "{}"}]

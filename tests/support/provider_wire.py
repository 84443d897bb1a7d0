"""Each provider's streamed answer as raw bytes, frame by frame, for `Raw` replies.

The fake's scripted `Reply` always ends a stream properly; these builders can leave the end
out, end with a refusal, or carry any usage, in the exact wire format the SDKs parse.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.fake_providers import Raw


def _data(value: Any, event: str | None = None, *, crlf: bool = False) -> bytes:
    end = "\r\n\r\n" if crlf else "\n\n"  # Gemini ends its SSE events with CRLFs
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(value)}{end}".encode()


def anthropic(
    pieces: list[str], stop_reason: str = "end_turn", *, output_tokens: int = 5, ends: bool = True
) -> list[bytes]:
    """A Messages stream; `ends=False` stops after the text, before message_delta/stop."""
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 1},
    }
    block = {"index": 0, "content_block": {"type": "text", "text": ""}}
    frames = [
        _data({"type": "message_start", "message": message}, "message_start"),
        _data({"type": "content_block_start", **block}, "content_block_start"),
    ]
    for piece in pieces:
        delta = {"index": 0, "delta": {"type": "text_delta", "text": piece}}
        frames.append(_data({"type": "content_block_delta", **delta}, "content_block_delta"))
    if ends:
        frames += [
            _data({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _data(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
                "message_delta",
            ),
            _data({"type": "message_stop"}, "message_stop"),
        ]
    return frames


def _openai_chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None) -> bytes:
    common = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return _data({**common, "choices": choices, "usage": usage})


def openai(
    pieces: list[str], finish: str | None = "stop", *, output_tokens: int = 5, ends: bool = True
) -> list[bytes]:
    """A Chat Completions stream; `ends=False` stops after the text: no finish_reason, usage
    chunk or [DONE]."""

    def choice(delta: dict[str, str], reason: str | None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]

    frames = [_openai_chunk(choice({"role": "assistant", "content": ""}, None), None)]
    frames += [_openai_chunk(choice({"content": piece}, None), None) for piece in pieces]
    if ends:
        usage = {"prompt_tokens": 11, "completion_tokens": output_tokens}
        frames += [
            _openai_chunk(choice({}, finish), None),
            _openai_chunk([], {**usage, "total_tokens": 11 + output_tokens}),
            b"data: [DONE]\n\n",
        ]
    return frames


def gemini_chunk(
    text: str | None, finish: str | None = None, *, usage: dict[str, int] | None = None
) -> bytes:
    """One streamGenerateContent chunk; Gemini puts finishReason on the one with the last
    text (or on a chunk of its own, with no text, when it blocks an answer)."""
    candidate: dict[str, Any] = {"index": 0}
    if text is not None:
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
    if finish is not None:
        candidate["finishReason"] = finish
    counts = usage or {"promptTokenCount": 11, "totalTokenCount": 11}
    body = {"candidates": [candidate], "usageMetadata": counts, "modelVersion": "g"}
    return _data({**body, "responseId": "r"}, crlf=True)


def gemini_prompt_blocked(reason: str) -> bytes:
    """Gemini refusing the prompt itself: feedback and no candidates at all."""
    usage = {"promptTokenCount": 11, "totalTokenCount": 11}
    body = {"promptFeedback": {"blockReason": reason}, "usageMetadata": usage}
    return _data({**body, "modelVersion": "g", "responseId": "r"}, crlf=True)


def answer(wire: str, pieces: list[str]) -> Raw:
    """A whole, properly ended answer in `wire`'s format."""
    if wire == "anthropic":
        return Raw(anthropic(pieces))
    if wire == "openai":
        return Raw(openai(pieces))
    last = len(pieces) - 1
    return Raw([gemini_chunk(p, "STOP" if i == last else None) for i, p in enumerate(pieces)])


def error_body(status: int, body: dict[str, Any]) -> Raw:
    return Raw([json.dumps(body).encode()], status=status, media_type="application/json")

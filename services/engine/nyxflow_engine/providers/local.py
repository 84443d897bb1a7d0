"""`local`: a deterministic, offline provider that streams like a real one.

params: `tokens` (default 64) pieces streamed `token_delay_ms` apart; `items: K` makes the
output K markdown `## ` headings with a line under each; `fail: "message"` raises.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow_engine.providers.base import (
    FINISH_MAX_TOKENS,
    FINISH_STOP,
    Completion,
    CompletionRequest,
    OnDelta,
    ProviderError,
)

WORDS = [
    "analysis",
    "synthesis",
    "workflow",
    "durable",
    "stream",
    "lease",
    "token",
    "event",
    "step",
    "output",
    "review",
    "provider",
    "fallback",
    "tenant",
    "resume",
    "retry",
    "persist",
    "commit",
    "item",
    "heading",
    "summary",
    "detail",
]


class LocalProvider:
    name = "local"

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        params = request.params
        if "fail" in params:
            raise ProviderError(str(params["fail"]))
        tokens = _int(params, "tokens", 64, minimum=1)
        delay_s = _int(params, "token_delay_ms", 0, minimum=0) / 1000
        items = _int(params, "items", 0, minimum=0)
        pieces = _pieces(request.prompt, tokens, items)
        finish = FINISH_STOP
        if len(pieces) > request.max_tokens:
            pieces, finish = pieces[: request.max_tokens], FINISH_MAX_TOKENS
        for piece in pieces:
            await on_delta(piece)
            if delay_s:
                await asyncio.sleep(delay_s)
        return Completion(
            text="".join(pieces),
            finish_reason=finish,
            input_tokens=len(request.prompt.split()) + len(request.system.split()),
            output_tokens=len(pieces),
            served_by=f"local:{request.model or 'echo'}",
        )


def _int(params: dict[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgument(f"must be an integer >= {minimum}", field=f"params.{key}")
    return value


def _words(seed: str, count: int) -> list[str]:
    digest = hashlib.sha256(seed.encode()).digest()
    return [WORDS[(digest[i % len(digest)] + i) % len(WORDS)] for i in range(count)]


def _pieces(prompt: str, tokens: int, items: int) -> list[str]:
    """The output, split into exactly `tokens` pieces (or fewer if the text is shorter)."""
    if not items:
        return [word + " " for word in _words(prompt, tokens)]
    text = "".join(_item(prompt, i) for i in range(items))
    size = max(1, -(-len(text) // tokens))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _item(prompt: str, index: int) -> str:
    heading = _words(f"{prompt}/{index}", 1)[0]
    line = " ".join(_words(f"{prompt}#{index}", 6))
    return f"## Item {index + 1}: {heading}\n{line}\n\n"

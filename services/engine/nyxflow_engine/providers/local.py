"""`local`: a deterministic, offline provider that streams like a real one.

params: `tokens` (default 64) pieces streamed `token_delay_ms` apart; `items: K` makes the
output K markdown `## ` headings with a line under each; `script: "text"` answers exactly that
text (split into `tokens` pieces); `replies: {"needle": "text"}` answers the text of the first
needle found in the prompt (scripted pipelines: a reply per file); `fail: "message"` raises;
`context_tokens: N` is the model's context window, in pieces: an answer stops there, cut by
it (`context_window`), the pieces a continuation's prefix holds counting against it.
The same request always gives the same output; each alternative (`variant`) a different one.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow_engine.providers.base import (
    FINISH_CONTEXT_WINDOW,
    FINISH_MAX_TOKENS,
    FINISH_STOP,
    Completion,
    CompletionRequest,
    OnDelta,
    ProviderError,
)

WORDS = (
    "analysis", "synthesis", "workflow", "durable", "stream", "lease", "token", "event",
    "step", "output", "review", "provider", "fallback", "tenant", "resume", "retry",
    "persist", "commit", "item", "heading", "summary", "detail",
)  # fmt: skip


class LocalProvider:
    name = "local"

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        params = request.params
        if "fail" in params:
            await asyncio.sleep(0)  # as a real provider's refusal comes: over the network
            raise ProviderError(str(params["fail"]))
        delay_s = _int(params, "token_delay_ms", 0, minimum=0) / 1000
        pieces = _pieces(request)
        skipped = _already_produced(pieces, request.prefix)
        pieces = pieces[skipped:]
        finish = FINISH_STOP
        if len(pieces) > request.max_tokens:
            pieces, finish = pieces[: request.max_tokens], FINISH_MAX_TOKENS
        window = _int(params, "context_tokens", 0, minimum=0) - skipped
        if "context_tokens" in params and len(pieces) > window:
            pieces, finish = pieces[: max(0, window)], FINISH_CONTEXT_WINDOW
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


def _pieces(request: CompletionRequest) -> list[str]:
    """The whole answer, split into `tokens` pieces (fewer if the text is shorter)."""
    params = request.params
    tokens = _int(params, "tokens", 64, minimum=1)
    items = _int(params, "items", 0, minimum=0)
    seed = f"{request.system}\n{request.prompt}#{request.variant}"
    replies = params.get("replies")
    reply = (
        next((str(text) for needle, text in replies.items() if needle in request.prompt), None)
        if isinstance(replies, dict)
        else None
    )
    if reply is not None:
        text = reply
    elif "script" in params:
        text = str(params["script"])
    elif request.response_format == "verdict":
        text = "VERDICT: consistent\n- No contradictions found between the reviewed outputs.\n"
    elif items:
        text = "".join(_item(seed, i) for i in range(items))
    else:
        return [word + " " for word in _words(seed, tokens)]
    size = max(1, -(-len(text) // tokens))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _item(seed: str, index: int) -> str:
    heading = _words(f"{seed}/{index}", 1)[0]
    line = " ".join(_words(f"{seed}#{index}", 6))
    return f"## Item {index + 1}: {heading}\n{line}\n\n"


def _already_produced(pieces: list[str], prefix: str) -> int:
    """How many pieces the prefix covers: a continuation picks up where the cut fell."""
    count, length = 0, 0
    while count < len(pieces) and length + len(pieces[count]) <= len(prefix):
        length += len(pieces[count])
        count += 1
    return count

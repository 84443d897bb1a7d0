"""The provider interface: stream a completion, report usage and why it stopped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nyxflow.constants import MAX_SERVED_BY
from nyxflow.errors import NyxflowError

OnDelta = Callable[[str], Awaitable[None]]

FINISH_STOP = "stop"
FINISH_MAX_TOKENS = "max_tokens"
FINISH_CONTEXT_WINDOW = "context_window"  # cut like max_tokens, by the model's context window


def served_by_all(entries: Iterable[str]) -> str:
    """Every provider:model that made part of one text, in the order they served, each once:
    a continuation or a fan-out item may be served further down the chain than the first
    part. Past what runs stores, the last alone (the one that finished the text)."""
    # An entry may name several already (a fan-out item's continuations): each counts once.
    named = list(dict.fromkeys(one for e in entries for one in e.split(", ") if one))
    joined = ", ".join(named)
    return joined if len(joined) <= MAX_SERVED_BY else named[-1]


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    model: str
    max_tokens: int
    system: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    variant: int = 0  # which of N alternatives: providers vary the sample by it
    prefix: str = ""  # text already produced: continue it (after a max_tokens stop)
    response_format: str = ""  # "verdict": first line `VERDICT: consistent|inconsistent`


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    served_by: str
    # The last request's alone where output_tokens sums a step's continuations: the cut one,
    # measured against max_tokens. None: a single request, output_tokens is its own.
    request_output_tokens: int | None = None
    # Why the continuation of a cut answer failed: the text before it stands, still cut.
    continuation_error: str = ""

    @property
    def last_output_tokens(self) -> int:
        return (
            self.output_tokens if self.request_output_tokens is None else self.request_output_tokens
        )

    @property
    def truncated(self) -> bool:
        return self.finish_reason in (FINISH_MAX_TOKENS, FINISH_CONTEXT_WINDOW)


class ProviderError(NyxflowError):
    """The provider could not complete the request."""


class Provider(Protocol):
    name: str

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        """Stream the completion through `on_delta`, then return it whole."""
        ...

"""What the SDK-backed providers share: keys, continuation messages, error bodies, endings.

An answer stands only when the provider said why it ended and the reason is one the step can
use. A stream that stops before that word was cut on the way (retried). A refused, filtered or
blocked answer moves on to the next provider, even with partial text: that text is not the
answer asked for, and the chain's reset takes it off the screen. So does an empty answer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
from pydantic import SecretStr

from nyxflow_engine.providers.base import CompletionRequest
from nyxflow_engine.providers.failures import Action, ProviderFailure, failure

# A connection that broke, timed out or ended mid-stream: the SDKs let some of these through
# unwrapped, from either HTTP stack they use.
TRANSPORT_ERRORS = (httpx.HTTPError, httpx2.HTTPError, OSError, TimeoutError)

CONTINUE = "Continue exactly where you stopped, without repeating anything."


@dataclass(frozen=True)
class Endpoint:
    """Where a provider lives and how to authenticate. The key is only ever read here."""

    api_key: SecretStr | None
    base_url: str | None
    timeout_s: float
    env_name: str  # the setting to name when the key is missing

    def key(self, provider: str) -> str:
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ProviderFailure(
                Action.NEXT, f"{provider}: no API key configured ({self.env_name})"
            )
        return self.api_key.get_secret_value()


def chat_messages(request: CompletionRequest) -> list[dict[str, str]]:
    """User prompt, then (when continuing a cut-off answer) the text so far and a nudge."""
    messages = [{"role": "user", "content": request.prompt}]
    if request.prefix:
        messages += [
            {"role": "assistant", "content": request.prefix},
            {"role": "user", "content": CONTINUE},
        ]
    return messages


def error_detail(body: Any) -> tuple[str, str]:
    """(message, code) from a provider's error body: `{"error": {...}}` or the inner object."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
            code = str(inner.get("code") or inner.get("type") or inner.get("status") or "")
            return message, code
        if isinstance(inner, str):
            return inner, ""
    return (str(body) if body else ""), ""


def model_or(request: CompletionRequest, default: str) -> str:
    return request.model or default


def finish_of(
    provider: str,
    request: CompletionRequest,
    text: str,
    said: str | None,
    endings: Mapping[str, str],
    blocked: Collection[str],
) -> str:
    """The finish reason to record for the provider's own word for the end of its answer
    (`said`; None when the stream ended without one), or the failure of an answer that must
    not stand. `endings` maps the words of a usable answer, `blocked` names its refusals."""
    if said is None:
        raise failure(provider, None, "stream ended before the provider finished")
    if said in blocked:
        raise ProviderFailure(Action.NEXT, f"{provider}: answer blocked ({said})")
    finish = endings.get(said)
    if finish is None:
        raise ProviderFailure(Action.NEXT, f"{provider}: answer stopped early ({said})")
    if not text and not request.prefix:  # a continuation may rightly add nothing
        raise ProviderFailure(Action.NEXT, f"{provider}: empty answer ({said})")
    return finish

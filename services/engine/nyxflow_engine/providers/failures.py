"""Every provider error sorted in one place: try the next provider, retry, or give up.

Providers report failures differently (Anthropic says "credit balance is too low" in a 400,
OpenAI says `insufficient_quota` in a 429, Gemini `RESOURCE_EXHAUSTED`), so the adapters hand
over the status and the provider's own message and this module decides.
"""

from __future__ import annotations

from enum import StrEnum

from nyxflow_engine.providers.base import ProviderError


class Action(StrEnum):
    NEXT = "next"  # this provider cannot serve now (credit, quota, key, model): next one at once
    RETRY = "retry"  # transient: back off and try the same provider again
    FAIL = "fail"  # the request itself is bad: no provider will do better


# Lower-case fragments of the providers' own messages and error codes.
_OUT_OF_CREDIT = (
    "credit balance",
    "insufficient_quota",
    "exceeded your current quota",
    "billing",
    "quota exceeded",
    "exceeded quota",
    "payment required",
)
# A bad key is not always a 401: Gemini answers it with a 400 INVALID_ARGUMENT.
_BAD_KEY = ("api key not valid", "api_key_invalid", "invalid api key", "invalid x-api-key")
_RATE_LIMITED = ("rate_limit", "rate limit", "too many requests", "resource_exhausted")
# The providers' own words for "our side, try again" (as a code, or mid-stream).
_TRANSIENT = ("overloaded", "api_error", "server_error")
STREAM_OK = 200  # an error inside a stream that had started as a success


class ProviderFailure(ProviderError):
    """A classified failure of one provider; `reason` is safe to show (no keys, no prompt)."""

    def __init__(self, action: Action, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.action = action
        self.reason = reason
        self.status = status


def classify(status: int | None, message: str, code: str = "") -> Action:
    """`status` None means no HTTP answer: a refused connection, a timeout, a dropped stream."""
    text = f"{code} {message}".lower()
    if any(fragment in text for fragment in (*_OUT_OF_CREDIT, *_BAD_KEY)):
        return Action.NEXT
    if status is None or status in (408, 409, 425, 429) or status >= 500:
        return Action.RETRY
    if status in (401, 402, 403, 404):
        return Action.NEXT  # bad or missing key, no access, unknown model
    if any(fragment in text for fragment in (*_RATE_LIMITED, *_TRANSIENT)):
        return Action.RETRY
    if status == STREAM_OK:
        return Action.RETRY  # the request was taken; the stream broke off with an error
    return Action.FAIL


def failure(provider: str, status: int | None, message: str, code: str = "") -> ProviderFailure:
    where = f"HTTP {status}" if status is not None else "no response"
    reason = f"{provider}: {message.strip() or 'error'} ({where})"
    return ProviderFailure(classify(status, message, code), reason, status=status)

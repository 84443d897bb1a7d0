"""Every provider error sorted in one place: try the next provider, retry, or give up.

Providers report failures differently (Anthropic says "credit balance is too low" in a 400,
OpenAI says `insufficient_quota` in a 429, Gemini `RESOURCE_EXHAUSTED`), so the adapters hand
over the status and the provider's own message and this module decides.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from enum import StrEnum

from nyxflow_engine.providers.base import ProviderError


class Action(StrEnum):
    NEXT = "next"  # this provider cannot serve now (credit, quota, key, model): next one at once
    RETRY = "retry"  # transient: back off and try the same provider again
    FAIL = "fail"  # the request itself is bad: no provider will do better


# The providers' error codes decide first. A rate limit's message may well point at billing
# (OpenAI's free tier: "… Visit https://platform.openai.com/account/billing"): it is still a
# rate limit, gone in seconds.
# Gemini says "exceeded your current quota" of a per-minute limit and of a daily one alike:
# the adapter names which from the body's QuotaFailure (QUOTA_PER_MINUTE, QUOTA_PER_DAY).
QUOTA_PER_MINUTE, QUOTA_PER_DAY = "quota_per_minute", "quota_per_day"
_RATE_LIMIT_CODES = frozenset(
    {"rate_limit_exceeded", "rate_limit_error", "requests", "tokens", QUOTA_PER_MINUTE}
)
_ACCOUNT_CODES = frozenset({"insufficient_quota", QUOTA_PER_DAY})  # and every `billing_*` code
# Lower-case fragments of the providers' own messages and error codes. Phrases, never the bare
# word "billing", which a rate limit's link carries too.
_OUT_OF_CREDIT = (
    "credit balance",
    "insufficient_quota",
    "exceeded your current quota",
    "check your plan and billing details",
    "check your billing details",
    "billing hard limit",
    "billing_hard_limit",
    "billing_not_active",
    "quota exceeded",
    "exceeded quota",
    "payment required",
    "api usage limits",  # Anthropic's spend limit, a 400 invalid_request_error
)
# The account itself cannot be used (Anthropic says so in a 400 invalid_request_error).
_ACCOUNT_DISABLED = (
    "organization has been disabled",
    "organization is disabled",
    "account has been disabled",
    "account is disabled",
    "account is not active",
    "account has been deactivated",
)
# A bad key is not always a 401: Gemini answers it (and an expired one) with a 400
# INVALID_ARGUMENT, whose ErrorInfo reason API_KEY_INVALID the adapter passes as the code.
_BAD_KEY = (
    "api key not valid",
    "api key expired",
    "api_key_invalid",
    "invalid api key",
    "invalid x-api-key",
)
# This provider will not serve this caller from here (Gemini's 400 FAILED_PRECONDITION).
_CANNOT_SERVE_HERE = (
    "location is not supported",
    "not available in your country",
    "failed_precondition",
)
# The prompt (a continuation's included) leaves no room in the model's context window: a 400
# that no retry fixes, and that ends a continuation rather than the step (steps/context.py).
_CONTEXT_FULL = (
    "prompt is too long",  # Anthropic
    "exceed context limit",  # Anthropic: input length and `max_tokens` exceed context limit
    "context_length_exceeded",  # OpenAI's code
    "maximum context length",  # OpenAI-compatible servers (vLLM, llama.cpp) say it so
    "exceeds the maximum number of tokens allowed",  # Gemini
)
# `max_tokens` above what this model can write at all: another model of the chain may take it.
_OUTPUT_LIMIT = (
    "maximum allowed number of output tokens",  # Anthropic: max_tokens: 16384 > 8192, which is …
    "max_tokens is too large",  # OpenAI: … This model supports at most 4096 completion tokens
    "max_completion_tokens is too large",
    "completion tokens, whereas you provided",
    "'max_completion_tokens': integer above maximum value",
    "maxoutputtokens value of",  # Gemini: … but the supported range is from 1 to 8193
)
_RATE_LIMITED = ("rate_limit", "rate limit", "too many requests", "resource_exhausted")
# The providers' own words for "our side, try again" (as a code, or mid-stream).
_TRANSIENT = ("overloaded", "api_error", "server_error")
STREAM_OK = 200  # an error inside a stream that had started as a success


class ProviderFailure(ProviderError):
    """A classified failure of one provider; `reason` is safe to show (no keys, no prompt)."""

    def __init__(
        self,
        action: Action,
        reason: str,
        *,
        status: int | None = None,
        context_full: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.action = action
        self.reason = reason
        self.status = status
        self.context_full = context_full
        self.retry_after_s = retry_after_s  # the provider's own word on when to come back


class ContextWindowFull(ProviderError):
    """The request does not fit the model's context window: no provider of the chain is tried,
    and a continuation refused so ends with the text before it."""


def classify(status: int | None, message: str, code: str = "") -> Action:
    """`status` None means no HTTP answer: a refused connection, a timeout, a dropped stream."""
    codes = code.lower().split()
    if any(c in _ACCOUNT_CODES or c.startswith("billing_") for c in codes):
        return Action.NEXT
    if any(c in _RATE_LIMIT_CODES for c in codes):
        return Action.RETRY
    text = f"{code} {message}".lower()
    cannot_serve = (*_OUT_OF_CREDIT, *_ACCOUNT_DISABLED, *_BAD_KEY, *_CANNOT_SERVE_HERE)
    if any(fragment in text for fragment in cannot_serve):
        return Action.NEXT
    if status is None or status in (408, 409, 425, 429) or status >= 500:
        return Action.RETRY
    if status in (401, 402, 403, 404):
        return Action.NEXT  # bad or missing key, no access, unknown model
    if any(fragment in text for fragment in (*_RATE_LIMITED, *_TRANSIENT)):
        return Action.RETRY
    if status == STREAM_OK:
        return Action.RETRY  # the request was taken; the stream broke off with an error
    if _beyond_output_limit(text):
        return Action.NEXT
    return Action.FAIL


def _is_context_full(text: str) -> bool:
    return any(fragment in text for fragment in _CONTEXT_FULL)


def _beyond_output_limit(text: str) -> bool:
    # A full context window names max_tokens too (Anthropic: "input length and `max_tokens`
    # exceed context limit"): that stays a full window, which ends a continuation.
    return not _is_context_full(text) and any(f in text for f in _OUTPUT_LIMIT)


def failure(
    provider: str,
    status: int | None,
    message: str,
    code: str = "",
    *,
    retry_after_s: float | None = None,
) -> ProviderFailure:
    where = f"HTTP {status}" if status is not None else "no response"
    text = plain(message)  # classified too: a page's own words are not the provider's
    shown = text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"
    action = classify(status, text, code)
    said = f"{code} {text}".lower()
    if action is Action.NEXT and _beyond_output_limit(said):
        # Said plainly: the step's whole error when the chain has no other provider.
        shown = f"the model cannot write that many tokens (max_tokens above its limit): {shown}"
    reason = f"{provider}: {shown or 'error'} ({where})"
    full = action is Action.FAIL and _is_context_full(said)
    return ProviderFailure(
        action, reason, status=status, context_full=full, retry_after_s=retry_after_s
    )


RETRY_AFTER_LIMIT_S = 24 * 3600.0  # a longer (or garbled) wait is no plan to retry


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The wait a provider asked for in its headers: `retry-after-ms` (OpenAI), else
    `retry-after` in seconds or as an HTTP date (RFC 9110)."""
    if headers is None:
        return None
    milliseconds = _seconds(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    said = headers.get("retry-after")
    seconds = _seconds(said)
    if seconds is not None or not said:
        return seconds
    try:
        when = parsedate_to_datetime(said)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - time.time()), RETRY_AFTER_LIMIT_S)


def _seconds(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return min(value, RETRY_AFTER_LIMIT_S)


def duration_s(text: object) -> float | None:
    """A protobuf Duration in JSON ("27s", "0.5s"), as Gemini's RetryInfo carries it."""
    if not isinstance(text, str) or not text.endswith("s"):
        return None
    return _seconds(text[:-1])


REASON_LIMIT = 300  # a reason goes into events, the step's error and the run's error
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def plain(message: str) -> str:
    """A provider's message on one line; a proxy's HTML page (a gateway's 502, a sign-in
    page) named by its title instead of pasted whole."""
    text = message.strip()
    if text.lower().startswith(("<!doctype", "<html", "<head", "<body")):
        title = _TITLE.search(text)
        text = f"non-API response: {title.group(1)}" if title else "non-API response"
    return " ".join(text.split())

"""One table decides what each provider error means for the chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from nyxflow_engine.providers.chain import RetryPolicy
from nyxflow_engine.providers.failures import (
    RETRY_AFTER_LIMIT_S,
    Action,
    classify,
    duration_s,
    failure,
    retry_after_s,
)

CREDIT = "Your credit balance is too low to access the Anthropic API."
QUOTA = "You exceeded your current quota, please check your plan and billing details."
GEMINI_QUOTA = "Quota exceeded for quota metric 'Generate Content API requests'"
TOO_LONG = "prompt is too long: 250000 tokens > 200000 maximum"
# OpenAI's free-tier rate limit points at the billing page: still a rate limit.
RATE_LIMIT_BILLING_LINK = (
    "Rate limit reached for gpt-4.1 in organization org-x on requests per min (RPM): Limit 3, "
    "Used 3, Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/"
    "rate-limits to learn more. You can increase your rate limit by adding a payment method to "
    "your account at https://platform.openai.com/account/billing."
)
ANTHROPIC_OUTPUT_LIMIT = (
    "max_tokens: 16384 > 8192, which is the maximum allowed number of output tokens for "
    "claude-3-5-sonnet-20241022"
)
OPENAI_OUTPUT_LIMIT = (
    "max_tokens is too large: 32000. This model supports at most 16384 completion tokens, "
    "whereas you provided 32000."
)
GEMINI_OUTPUT_LIMIT = (
    "Unable to submit request because it has a maxOutputTokens value of 655360 but the "
    "supported range is from 1 (inclusive) to 8193 (exclusive). Update the value and try again."
)
ANTHROPIC_CONTEXT_FULL = (
    "input length and `max_tokens` exceed context limit: 197000 + 16384 > 200000, decrease "
    "input length or `max_tokens` and try again"
)


@pytest.mark.parametrize(
    ("status", "message", "code", "action"),
    [
        # Anthropic reports an empty wallet as a 400 invalid_request_error.
        (400, CREDIT, "invalid_request_error", Action.NEXT),
        (429, QUOTA, "insufficient_quota", Action.NEXT),
        (429, GEMINI_QUOTA, "RESOURCE_EXHAUSTED", Action.NEXT),
        (401, "invalid x-api-key", "authentication_error", Action.NEXT),
        (403, "permission denied", "PERMISSION_DENIED", Action.NEXT),
        (404, "model: claude-9 not found", "not_found_error", Action.NEXT),
        (429, "Rate limit reached for requests", "rate_limit_exceeded", Action.RETRY),
        (529, "Overloaded", "overloaded_error", Action.RETRY),
        (500, "Internal server error", "api_error", Action.RETRY),
        (503, "The model is overloaded", "UNAVAILABLE", Action.RETRY),
        (None, "connection failed: RemoteProtocolError", "", Action.RETRY),
        (400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", Action.NEXT),
        (200, "Overloaded", "overloaded_error", Action.RETRY),
        (200, "The server had an error while processing your request.", "", Action.RETRY),
        (200, CREDIT, "invalid_request_error", Action.NEXT),
        (400, TOO_LONG, "invalid_request_error", Action.FAIL),
        (422, "messages: field required", "", Action.FAIL),
        # Cannot serve this caller now, from here: spend limit, expired key, region.
        (400, "You have reached your specified API usage limits.", "invalid_request_error",
         Action.NEXT),
        (400, "API key expired. Please renew the API key.", "INVALID_ARGUMENT", Action.NEXT),
        (400, "Please renew the API key.", "INVALID_ARGUMENT API_KEY_INVALID", Action.NEXT),
        (400, "User location is not supported for the API use.", "FAILED_PRECONDITION",
         Action.NEXT),
        # The code decides before the words: a rate limit naming billing is still transient.
        (429, RATE_LIMIT_BILLING_LINK, "rate_limit_exceeded", Action.RETRY),
        (429, RATE_LIMIT_BILLING_LINK, "requests", Action.RETRY),
        (429, "Your account is not active, please check your billing details on our website.",
         "billing_not_active", Action.NEXT),
        (429, "Billing hard limit has been reached", "billing_hard_limit_reached", Action.NEXT),
        (200, "Rate limit reached. Visit https://platform.openai.com/account/billing", "",
         Action.RETRY),
        # The account cannot be used at all.
        (400, "This organization has been disabled.", "invalid_request_error", Action.NEXT),
        (400, "Your account is not active.", "invalid_request_error", Action.NEXT),
        # max_tokens beyond what the model can write: another model may take it.
        (400, ANTHROPIC_OUTPUT_LIMIT, "invalid_request_error", Action.NEXT),
        (400, OPENAI_OUTPUT_LIMIT, "invalid_request_error", Action.NEXT),
        (400, "Invalid 'max_completion_tokens': integer above maximum value. Expected a value "
         "<= 100000, but got 200000 instead.", "integer_above_max_value", Action.NEXT),
        (400, GEMINI_OUTPUT_LIMIT, "INVALID_ARGUMENT", Action.NEXT),
        (400, ANTHROPIC_CONTEXT_FULL, "invalid_request_error", Action.FAIL),
    ],
)  # fmt: skip
def test_classification(status: int | None, message: str, code: str, action: Action) -> None:
    assert classify(status, message, code) is action


def test_failure_reason_names_provider_and_status() -> None:
    error = failure("anthropic", 400, "Your credit balance is too low", "invalid_request_error")
    assert error.action is Action.NEXT
    assert error.reason == "anthropic: Your credit balance is too low (HTTP 400)"
    assert "no response" in failure("google", None, "connection failed").reason


def test_a_limit_the_model_cannot_give_says_so() -> None:
    error = failure("anthropic", 400, ANTHROPIC_OUTPUT_LIMIT, "invalid_request_error")
    assert (error.action, error.context_full) == (Action.NEXT, False)
    assert error.reason == (
        "anthropic: the model cannot write that many tokens (max_tokens above its limit): "
        f"{ANTHROPIC_OUTPUT_LIMIT} (HTTP 400)"
    )
    full = failure("anthropic", 400, ANTHROPIC_CONTEXT_FULL, "invalid_request_error")
    assert (full.action, full.context_full) == (Action.FAIL, True)
    assert "cannot write" not in full.reason


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(attempts=6, backoff_s=0.5, backoff_max_s=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered, so replicas do not retry in lockstep


def test_a_proxys_page_is_named_by_its_title_and_any_reason_is_kept_short() -> None:
    page = "<!DOCTYPE html><html><head><title>502: Bad gateway</title><style>"
    page += "a{b:c}" * 500 + "</style></head><body>billing</body></html>"
    error = failure("anthropic", 502, page)
    assert error.reason == "anthropic: non-API response: 502: Bad gateway (HTTP 502)"
    assert error.action is Action.RETRY  # the page's own words ("billing") do not count
    assert failure("google", 200, "<html><body>no title</body></html>").reason == (
        "google: non-API response (HTTP 200)"
    )
    long = failure("openai", 400, "word " * 200)
    assert len(long.reason) < 320 and long.reason.endswith("… (HTTP 400)")


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "20"}, 20.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "20"}, 0.25),  # the finer one first
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date gone by
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1e9"}, RETRY_AFTER_LIMIT_S),
        ({}, None),
        (None, None),
    ],
)
def test_the_wait_a_provider_asks_for(headers: dict[str, str] | None, wait: float | None) -> None:
    assert retry_after_s(headers) == wait


def test_a_retry_after_date_is_the_time_until_it() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    wait = retry_after_s({"retry-after": later})
    assert wait is not None and 28 <= wait <= 30


@pytest.mark.parametrize(
    ("text", "seconds"), [("27s", 27.0), ("0.5s", 0.5), ("27", None), (27, None), (None, None)]
)
def test_a_protobuf_duration(text: object, seconds: float | None) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize(
    ("code", "action"),
    [
        ("RESOURCE_EXHAUSTED quota_per_minute", Action.RETRY),
        ("RESOURCE_EXHAUSTED quota_per_day", Action.NEXT),
        ("RESOURCE_EXHAUSTED quota_per_minute quota_per_day", Action.NEXT),
        ("RESOURCE_EXHAUSTED", Action.NEXT),  # no QuotaFailure: the message's word stands
    ],
)
def test_which_gemini_quota_ran_out_decides(code: str, action: Action) -> None:
    assert classify(429, QUOTA, code) is action

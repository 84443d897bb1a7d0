"""One table decides what each provider error means for the chain."""

from __future__ import annotations

import pytest

from nyxflow_engine.providers.chain import RetryPolicy
from nyxflow_engine.providers.failures import Action, classify, failure

CREDIT = "Your credit balance is too low to access the Anthropic API."
QUOTA = "You exceeded your current quota, please check your plan and billing details."
GEMINI_QUOTA = "Quota exceeded for quota metric 'Generate Content API requests'"
TOO_LONG = "prompt is too long: 250000 tokens > 200000 maximum"


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
    ],
)  # fmt: skip
def test_classification(status: int | None, message: str, code: str, action: Action) -> None:
    assert classify(status, message, code) is action


def test_failure_reason_names_provider_and_status() -> None:
    error = failure("anthropic", 400, "Your credit balance is too low", "invalid_request_error")
    assert error.action is Action.NEXT
    assert error.reason == "anthropic: Your credit balance is too low (HTTP 400)"
    assert "no response" in failure("google", None, "connection failed").reason


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

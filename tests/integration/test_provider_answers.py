"""What a provider's answer really ends with, sent as raw wire bytes to the real SDKs: a
stream cut before its last event, a refusal or filtered answer, a blocked prompt, a body the
SDK cannot read, a proxy's page, errors that mean "not from here", and the finish reasons and
usage a step records."""

from __future__ import annotations

from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from tests.support import provider_wire as wire_of
from tests.support.fake_providers import FakeProviders, Raw, Reply
from tests.support.inprocess import Clients
from tests.support.provider_runs import (
    of_type,
    run_steps,
    step,
    streamed_text,
)

WIRES = ("anthropic", "openai", "google")
WHOLE = ["The answer ", "has three ", "parts."]
OTHER = ["served by ", "the next provider"]


def next_of(wire: str) -> str:
    return "anthropic" if wire == "openai" else "openai"


def cut(wire: str, pieces: list[str]) -> Raw:
    """The first pieces of an answer and then a clean end of the body, with no final event:
    a proxy closing the stream politely, a compatible server dying mid-answer."""
    if wire == "anthropic":
        return Raw(wire_of.anthropic(pieces, ends=False))
    if wire == "openai":
        return Raw(wire_of.openai(pieces, ends=False))
    return Raw([wire_of.gemini_chunk(p) for p in pieces])


@pytest.mark.parametrize("wire", WIRES)
async def test_a_stream_ended_before_the_providers_last_event_is_retried(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """It was stored as the whole answer: finish `stop`, not truncated, not retried."""
    fake.script(wire, cut(wire, WHOLE[:1]), wire_of.answer(wire, WHOLE))

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m"]))

    assert run.status == ev.COMPLETED, run.error
    assert (run.steps[0].output, run.steps[0].finish_reason) == ("".join(WHOLE), "stop")
    assert fake.count(wire) == 2
    assert any(d.get("reset") for d in of_type(events, ev.STEP_DELTA))
    assert streamed_text(events) == "".join(WHOLE)


def refused(wire: str, reason: str) -> Raw:
    """Part of an answer, then the provider's own word for stopping it."""
    pieces = ["Partial ", "answer"]
    if wire == "anthropic":
        return Raw(wire_of.anthropic(pieces, reason))
    if wire == "openai":
        return Raw(wire_of.openai(pieces, reason))
    return Raw([wire_of.gemini_chunk(pieces[0]), wire_of.gemini_chunk(None, reason)])


REFUSALS = [
    ("anthropic", "refusal"),
    ("openai", "content_filter"),
    ("google", "SAFETY"),
    ("google", "RECITATION"),
    ("google", "PROHIBITED_CONTENT"),
    ("google", "BLOCKLIST"),
]


@pytest.mark.parametrize(("wire", "reason"), REFUSALS)
async def test_a_refused_or_filtered_answer_falls_back_and_its_part_is_dropped(
    fake_api: Clients, fake: FakeProviders, wire: str, reason: str
) -> None:
    """They completed as normal `stop` answers holding the part before the refusal."""
    other = next_of(wire)
    fake.script(wire, refused(wire, reason))
    fake.script(other, wire_of.answer(other, OTHER))

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m", f"{other}:m"]))

    done = run.steps[0]
    assert run.status == ev.COMPLETED, run.error
    assert (done.output, done.served_by) == ("".join(OTHER), f"{other}:m")
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["reason"] == f"{wire}: answer blocked ({reason})"
    assert fake.count(wire) == 1  # the same question gets the same refusal
    assert streamed_text(events) == "".join(OTHER)


async def test_a_refusal_from_every_provider_fails_the_step_saying_so(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("anthropic", refused("anthropic", "refusal"))
    fake.script("google", refused("google", "SAFETY"))

    run, _ = await run_steps(fake_api, step("S", ["anthropic:m", "google:m"]))

    failed = run.steps[0]
    assert (run.status, failed.status, failed.output) == (ev.FAILED, ev.FAILED, "")
    assert "anthropic: answer blocked (refusal)" in failed.error
    assert "google: answer blocked (SAFETY)" in failed.error


async def test_a_blocked_gemini_prompt_falls_back_and_never_completes_empty(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The prompt block (feedback, no candidates) completed the step with a NULL output, and
    the next step was prompted with nothing in its place."""
    fake.script("google", Raw([wire_of.gemini_prompt_blocked("PROHIBITED_CONTENT")]))
    fake.script("google", Raw([wire_of.gemini_prompt_blocked("PROHIBITED_CONTENT")]))
    fake.script("openai", wire_of.answer("openai", OTHER))
    use = pb.StepSpec(
        name="Use", kind="llm", prompt="Refine: {{ steps.Plan.output }}", providers=["google:m"]
    )

    run, events = await run_steps(fake_api, step("Plan", ["google:m", "openai:m"]), use)

    plan, used = run.steps
    assert (plan.status, plan.output, plan.served_by) == (ev.COMPLETED, "".join(OTHER), "openai:m")
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["reason"] == "google: prompt blocked (PROHIBITED_CONTENT)"
    assert (used.status, used.output) == (ev.FAILED, "")
    assert "google: prompt blocked (PROHIBITED_CONTENT)" in used.error
    assert run.status == ev.FAILED


@pytest.mark.parametrize("wire", WIRES)
async def test_an_empty_answer_falls_back(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    other = next_of(wire)
    fake.script(wire, wire_of.answer(wire, [""]))
    fake.script(other, wire_of.answer(other, OTHER))

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m", f"{other}:m"]))

    assert (run.steps[0].output, run.steps[0].served_by) == ("".join(OTHER), f"{other}:m")
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["reason"].startswith(f"{wire}: empty answer (")


CORRUPT_FRAME = {
    "anthropic": b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n',
    "openai": b'data: {"id": "chatcmpl-1", "choi\n\n',
    "google": b'data: {"candidates": [{"cont\r\n\r\n',
}


@pytest.mark.parametrize("wire", WIRES)
async def test_a_corrupt_frame_mid_stream_is_retried(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """The SDK's parse error escaped the failure rules: `JSONDecodeError: …` or
    `UnknownApiResponseError: …` became the step's error, never retried."""
    broken = Raw([*cut(wire, ["Par"]).frames, CORRUPT_FRAME[wire]])
    fake.script(wire, broken, wire_of.answer(wire, WHOLE))

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m"]))

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == "".join(WHOLE)
    assert fake.count(wire) == 2
    assert streamed_text(events) == "".join(WHOLE)


SIGN_IN = (
    b"<html><head><title>Sign in</title></head><body><h1>Proxy authentication</h1></body></html>"
)


@pytest.mark.parametrize("wire", WIRES)
async def test_a_proxys_page_with_200_is_retried_then_passed_on(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """Anthropic and Gemini failed the step with `AssertionError: ` or the page itself as
    the error; OpenAI completed the step with an empty output."""
    other = next_of(wire)
    fake.script(wire, *(Raw([SIGN_IN], media_type="text/html") for _ in range(3)))
    fake.script(other, wire_of.answer(other, OTHER))

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m", f"{other}:m"]))

    assert run.status == ev.COMPLETED, run.error
    assert (run.steps[0].output, run.steps[0].served_by) == ("".join(OTHER), f"{other}:m")
    assert fake.count(wire) == 3
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["reason"].startswith(f"{wire}: ")
    assert "<" not in fallback["reason"]


BAD_GATEWAY = (
    b"<!DOCTYPE html><html><head><title>api.example.com | 502: Bad gateway</title>"
    b"<style>body{font-family:sans-serif}" + b".x{margin:0}" * 300 + b"</style></head>"
    b"<body><h1>Bad gateway</h1><p>Error code 502</p></body></html>"
)


@pytest.mark.parametrize("wire", WIRES)
async def test_a_proxys_error_page_is_named_by_its_title_not_stored_whole(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """The whole page (3,834 characters of HTML) was the fallback reason and the error of
    the step and of the run."""
    fake.script(wire, *(Raw([BAD_GATEWAY], status=502, media_type="text/html") for _ in range(3)))

    run, _ = await run_steps(fake_api, step("S", [f"{wire}:m"]))

    assert run.status == ev.FAILED
    error = run.steps[0].error
    assert f"{wire}: non-API response: api.example.com | 502: Bad gateway (HTTP 502)" in error
    assert len(error) < 200 and len(run.error) < 300


ANTHROPIC_SPEND_LIMIT = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "You have reached your specified API usage limits. You will regain access "
        "on 2026-04-01 at 00:00 UTC.",
    },
    "request_id": "req_011CZM37KZVHEegQcQEk3tSW",
}
GEMINI_KEY_EXPIRED = {
    "error": {
        "code": 400,
        "message": "API key expired. Please renew the API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": "API key expired. Please renew the API key.",
            },
        ],
    }
}
GEMINI_RENEW_KEY = {  # only the ErrorInfo reason says it is the key
    "error": {
        **GEMINI_KEY_EXPIRED["error"],
        "message": "Please renew the API key.",
    }
}
GEMINI_LOCATION = {
    "error": {
        "code": 400,
        "message": "User location is not supported for the API use.",
        "status": "FAILED_PRECONDITION",
    }
}
ANTHROPIC_DISABLED = {
    "type": "error",
    "error": {"type": "invalid_request_error", "message": "This organization has been disabled."},
    "request_id": "req_011CZN5aK3LmTQvWbq8sUd2E",
}


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        ("anthropic", ANTHROPIC_SPEND_LIMIT),
        ("google", GEMINI_KEY_EXPIRED),
        ("google", GEMINI_RENEW_KEY),
        ("google", GEMINI_LOCATION),
        ("anthropic", ANTHROPIC_DISABLED),
    ],
    ids=[
        "anthropic-spend-limit",
        "gemini-key-expired",
        "gemini-key-reason",
        "gemini-location",
        "anthropic-disabled",
    ],
)
async def test_a_provider_that_cannot_serve_from_here_falls_back_at_once(
    fake_api: Clients, fake: FakeProviders, wire: str, body: dict[str, Any]
) -> None:
    """These 400s failed the step as a bad request instead of passing it on."""
    fake.script(wire, wire_of.error_body(400, body))
    fake.script("openai", wire_of.answer("openai", OTHER))

    run, events = await run_steps(fake_api, step("Plan", [f"{wire}:m", "openai:gpt-4.1"]))

    assert run.status == ev.COMPLETED, run.steps[0].error
    assert run.steps[0].served_by == "openai:gpt-4.1"
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["reason"] == f"{wire}: {body['error']['message']} (HTTP 400)"
    assert fake.count(wire) == 1


# max_tokens above what the model can write at all, in each provider's words.
BEYOND_OUTPUT_LIMIT: dict[str, dict[str, Any]] = {
    "anthropic": {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: 16384 > 8192, which is the maximum allowed number of "
            "output tokens for claude-3-5-sonnet-20241022",
        },
    },
    "openai": {
        "error": {
            "message": "max_tokens is too large: 16384. This model supports at most 4096 "
            "completion tokens, whereas you provided 16384.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": None,
        }
    },
    "google": {
        "error": {
            "code": 400,
            "message": "Unable to submit request because it has a maxOutputTokens value of "
            "16384 but the supported range is from 1 (inclusive) to 8193 (exclusive). Update "
            "the value and try again.",
            "status": "INVALID_ARGUMENT",
        }
    },
}
CANNOT_WRITE = "the model cannot write that many tokens (max_tokens above its limit)"


@pytest.mark.parametrize("wire", WIRES)
async def test_a_limit_one_model_cannot_give_passes_to_the_next_provider(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """A raised max_tokens (8192 -> 16384) failed the step as a bad request, though the
    chain's next model could write that much."""
    body = BEYOND_OUTPUT_LIMIT[wire]
    fake.script(wire, wire_of.error_body(400, body))
    other = next_of(wire)
    fake.script(other, wire_of.answer(other, OTHER))

    run, events = await run_steps(
        fake_api, step("Long", [f"{wire}:m", f"{other}:big"], max_tokens=16384)
    )

    assert run.status == ev.COMPLETED, run.steps[0].error
    assert run.steps[0].served_by == f"{other}:big"
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["reason"] == f"{wire}: {CANNOT_WRITE}: {body['error']['message']} (HTTP 400)"
    assert fake.count(wire) == 1


async def test_a_limit_no_model_of_the_chain_can_give_fails_the_step_saying_so(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("anthropic", wire_of.error_body(400, BEYOND_OUTPUT_LIMIT["anthropic"]))

    run, _ = await run_steps(fake_api, step("Long", ["anthropic:m"], max_tokens=16384))

    assert run.status == ev.FAILED
    assert f"anthropic: {CANNOT_WRITE}: max_tokens: 16384 > 8192" in run.steps[0].error
    assert fake.count("anthropic") == 1


async def test_an_answer_cut_by_the_context_window_is_kept_and_not_continued(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Anthropic's `model_context_window_exceeded`: the window is full, so a continuation (the
    prompt plus the text so far) cannot fit. It was sent anyway, and its 400 failed the step."""
    first = wire_of.anthropic(["cut off "], "model_context_window_exceeded", output_tokens=64)
    fake.script("anthropic", Raw(first), wire_of.error_body(400, ANTHROPIC_TOO_LONG))

    run, events = await run_steps(
        fake_api, step("S", ["anthropic:claude-sonnet-4-5"], max_tokens=64, auto_continue=1)
    )

    assert run.status == ev.COMPLETED, run.error
    done = run.steps[0]
    assert (done.output, done.truncated, done.finish_reason) == ("cut off ", True, "context_window")
    assert fake.count("anthropic") == 1
    (truncated,) = of_type(events, ev.STEP_TRUNCATED)
    assert truncated["reason"] == "context_window"


ANTHROPIC_TOO_LONG = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 200410 tokens > 200000 maximum",
    },
}
OPENAI_TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 128000 tokens. However, your "
        "messages resulted in 128410 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
GEMINI_TOO_LONG = {
    "error": {
        "code": 400,
        "message": "The input token count (1048990) exceeds the maximum number of tokens "
        "allowed (1048576).",
        "status": "INVALID_ARGUMENT",
    }
}
TOO_LONG: dict[str, dict[str, Any]] = {
    "anthropic": ANTHROPIC_TOO_LONG,
    "openai": OPENAI_TOO_LONG,
    "google": GEMINI_TOO_LONG,
}
MODEL = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1", "google": "gemini-2.5-pro"}


@pytest.mark.parametrize("wire", WIRES)
async def test_a_continuation_that_no_longer_fits_keeps_the_answer_so_far(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """A long answer continued until prompt plus text filled the window: the provider's
    "too long" 400 failed the step and threw away every part already written."""
    fake.script(
        wire,
        Reply(text="part one ", finish="max_tokens", output_tokens=64),
        wire_of.error_body(400, TOO_LONG[wire]),
    )

    run, events = await run_steps(
        fake_api, step("S", [f"{wire}:{MODEL[wire]}"], max_tokens=64, auto_continue=3)
    )

    assert run.status == ev.COMPLETED, run.error
    done = run.steps[0]
    assert (done.output, done.truncated, done.finish_reason) == (
        "part one ",
        True,
        "context_window",
    )
    assert fake.count(wire) == 2  # no retry of a request that cannot fit
    (truncated,) = of_type(events, ev.STEP_TRUNCATED)
    assert (truncated["used"], truncated["reason"]) == (64, "context_window")


async def test_a_prompt_that_does_not_fit_fails_the_step_with_the_providers_words(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("openai", wire_of.error_body(400, OPENAI_TOO_LONG))

    run, _ = await run_steps(fake_api, step("S", ["openai:gpt-4.1"], auto_continue=3))

    assert run.status == ev.FAILED
    assert "maximum context length is 128000 tokens" in run.steps[0].error
    assert fake.count("openai") == 1  # not retried: it cannot fit the next time either


@pytest.mark.parametrize("wire", WIRES)
async def test_a_prompt_too_long_for_one_model_goes_to_the_next(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """Claude's 200k window refused it; Gemini's 1M would have taken it, and was never asked."""
    other = "google" if wire != "google" else "anthropic"
    fake.script(wire, wire_of.error_body(400, TOO_LONG[wire]))
    fake.script(other, Reply(text="it fits here"))

    run, events = await run_steps(
        fake_api, step("S", [f"{wire}:{MODEL[wire]}", f"{other}:{MODEL[other]}"])
    )

    assert run.status == ev.COMPLETED, run.error
    assert (run.steps[0].output, run.steps[0].served_by) == (
        "it fits here",
        f"{other}:{MODEL[other]}",
    )
    assert fake.count(wire) == 1  # not retried: it cannot fit the next time either
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["from"] == f"{wire}:{MODEL[wire]}"


async def test_a_prompt_too_long_for_every_model_fails_with_each_ones_words(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("anthropic", wire_of.error_body(400, ANTHROPIC_TOO_LONG))
    fake.script("google", wire_of.error_body(400, GEMINI_TOO_LONG))

    run, _ = await run_steps(fake_api, step("S", ["anthropic:claude", "google:gemini"]))

    assert run.status == ev.FAILED
    error = run.steps[0].error
    assert "prompt is too long" in error and "exceeds the maximum number of tokens" in error


async def test_an_answer_cut_by_the_context_window_is_marked_truncated(
    fake_api: Clients, fake: FakeProviders
) -> None:
    first = wire_of.anthropic(["cut off ", "mid"], "model_context_window_exceeded")
    fake.script("anthropic", Raw(first))

    run, events = await run_steps(fake_api, step("S", ["anthropic:claude-sonnet-4-5"]))

    done = run.steps[0]
    assert (done.truncated, done.finish_reason) == (True, "context_window")
    assert len(of_type(events, ev.STEP_TRUNCATED)) == 1


async def test_gemini_thinking_counts_as_output_usage(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Gemini reports thinking apart (thoughtsTokenCount), billed as output and counted
    against maxOutputTokens: the step recorded 40 output tokens of a 1,000 spent."""
    usage = {
        "promptTokenCount": 11,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 960,
        "totalTokenCount": 1011,
    }
    last = wire_of.gemini_chunk("answer.", "MAX_TOKENS", usage=usage)
    fake.script("google", Raw([wire_of.gemini_chunk("Short "), last]))

    run, events = await run_steps(fake_api, step("S", ["google:gemini-2.5-pro"], max_tokens=1000))

    done = run.steps[0]
    assert (done.input_tokens, done.output_tokens, done.truncated) == (11, 1000, True)
    (truncated,) = of_type(events, ev.STEP_TRUNCATED)
    assert (truncated["used"], truncated["limit"]) == (1000, 1000)


async def test_a_truncation_reports_the_cut_requests_usage_against_its_limit(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """`used` summed every continuation against one request's `limit`: "used 128, limit 64"."""
    fake.script(
        "openai",
        Reply(text="part one ", finish="max_tokens", output_tokens=64),
        Reply(text="part two", finish="max_tokens", output_tokens=60),
    )

    run, events = await run_steps(
        fake_api, step("S", ["openai:gpt-4.1"], max_tokens=64, auto_continue=1)
    )

    assert run.steps[0].output_tokens == 124  # usage is still every request's
    (truncated,) = of_type(events, ev.STEP_TRUNCATED)
    assert (truncated["used"], truncated["limit"]) == (60, 64)


async def test_a_fan_outs_truncation_reports_one_items_usage_against_its_limit(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """`used` summed every item's tokens against one request's `limit`."""
    fake.script(
        "openai",
        *(Reply(text=f"item {i}", finish="max_tokens", output_tokens=64) for i in range(3)),
    )
    plan = pb.StepSpec(
        name="Plan", kind="llm", prompt="p", providers=["local"], params_json='{"items": 3}'
    )
    each = pb.StepSpec(
        name="Each",
        kind="fan_out",
        prompt="Expand: {{ item }}",
        source="Plan",
        split="headings",
        providers=["openai:gpt-4.1"],
        max_tokens=64,
    )

    run, events = await run_steps(fake_api, plan, each)

    assert run.steps[1].output_tokens == 192
    (truncated,) = of_type(events, ev.STEP_TRUNCATED)
    assert (truncated["used"], truncated["limit"], truncated["items"]) == (64, 64, [0, 1, 2])

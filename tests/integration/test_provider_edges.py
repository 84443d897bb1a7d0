"""Edges of a provider's answer: where a continuation joins the text so far, a continuation
that fails, an answer finished before its connection broke, the engine's own default chain."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from nyxflow import events as ev
from nyxflow.cli.connection import load_settings
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.settings import EngineSettings
from tests.integration.test_provider_answers import ANTHROPIC_TOO_LONG, OPENAI_TOO_LONG
from tests.support import provider_wire as wire_of
from tests.support.fake_providers import FakeProviders, Raw, Reply
from tests.support.inprocess import Clients
from tests.support.provider_runs import of_type, run_steps, step, streamed_text


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("```python\ndef f():\n", "\n    return 1\n```\n"),  # cut at the newline
        ("```python\ndef f():\n    ", "\n    return 1\n```\n"),  # cut after the indentation
        ("```python\ndef f():\n", "    return 1\n```\n"),  # the newline not sent again
    ],
    ids=["newline", "indentation", "no-overlap"],
)
@pytest.mark.parametrize("chunk", [1, 3, 64])  # the overlap over events of whitespace alone
async def test_an_anthropic_continuation_keeps_the_next_lines_indentation(
    fake_api: Clients, fake: FakeProviders, first: str, again: str, chunk: int
) -> None:
    """The prefill goes without its trailing whitespace, so the model may send it again: only
    that is dropped at the join. All of the continuation's leading whitespace was, the next
    line's indentation with it."""
    fake.script(
        "anthropic",
        Reply(text=first, finish="max_tokens"),
        Reply(text=again, chunk=chunk),  # goes on right after "def f():"
    )

    run, events = await run_steps(
        fake_api, step("Code", ["anthropic:claude"], max_tokens=8, auto_continue=1)
    )

    assert fake.requests[-1].body["messages"][-1]["content"] == "```python\ndef f():"
    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == "```python\ndef f():\n    return 1\n```\n"
    assert streamed_text(events) == run.steps[0].output


FIRST_PART = Reply(text="a long first part, ", chunk=4, finish="max_tokens", output_tokens=8)


@pytest.mark.parametrize(
    ("continuation", "said"),
    [
        ([Reply(error="overloaded") for _ in range(3)], "overloaded"),  # retried, then given up
        ([Reply(error="invalid", message="Prefilling is not supported.")], "not supported"),
        ([Reply(text="second part", chunk=4, error="overloaded", error_after=1)] * 3, "overload"),
    ],
    ids=["overloaded", "refused", "broken-mid-stream"],
)
async def test_a_failed_continuation_keeps_the_first_part_cut(
    fake_api: Clients, fake: FakeProviders, continuation: list[Reply], said: str
) -> None:
    """The first request answered (cut at max_tokens, paid for), its continuation failed:
    the step failed and the first part was lost, where without auto_continue it stands."""
    fake.script("anthropic", FIRST_PART, *continuation)

    run, events = await run_steps(
        fake_api, step("Long", ["anthropic:claude"], max_tokens=8, auto_continue=2)
    )

    assert run.status == ev.COMPLETED, run.error
    done = run.steps[0]
    assert done.output == FIRST_PART.text
    assert (done.truncated, done.finish_reason) == (True, "max_tokens")
    assert fake.count("anthropic") == 1 + len(continuation)
    assert streamed_text(events) == done.output
    (cut,) = of_type(events, ev.STEP_TRUNCATED)
    assert (cut["used"], cut["reason"]) == (8, "max_tokens")
    assert said in cut["continuation_error"].lower()


async def test_a_fan_out_item_whose_continuation_failed_says_why(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The item kept its first part, cut, but why it was not continued was told nowhere."""
    fake.script("anthropic", FIRST_PART, Reply(error="invalid", message="Prefilling is off."))
    source = pb.StepSpec(
        name="Topics", kind="llm", prompt="List.", providers=["local"],
        params_json=json.dumps({"items": 1, "tokens": 8}),
    )  # fmt: skip
    each = pb.StepSpec(
        name="Each", kind="fan_out", source="Topics", prompt="{{ item }}",
        providers=["anthropic:claude"], max_tokens=8, auto_continue=1,
    )  # fmt: skip

    run, events = await run_steps(fake_api, source, each)

    assert run.status == ev.COMPLETED, run.error
    (item,) = run.steps[1].items
    assert (item.output, item.truncated) == (FIRST_PART.text, True)
    (progress,) = of_type(events, ev.FAN_OUT_PROGRESS)
    assert progress["truncated"] and "prefilling is off" in progress["continuation_error"].lower()


async def test_a_continuation_one_window_refuses_and_another_provider_fails_is_not_full(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Anthropic's window is full, OpenAI is only overloaded: the chain said "context window
    full" if any provider did, so the answer was marked as one more tokens would not help."""
    fake.script("anthropic", FIRST_PART, wire_of.error_body(400, ANTHROPIC_TOO_LONG))
    fake.script("openai", *[Reply(error="overloaded") for _ in range(3)])

    run, events = await run_steps(
        fake_api,
        step("Long", ["anthropic:claude", "openai:gpt-4.1"], max_tokens=8, auto_continue=1),
    )

    assert run.status == ev.COMPLETED, run.error
    done = run.steps[0]
    assert (done.output, done.finish_reason) == ("a long first part, ", "max_tokens")
    (cut,) = of_type(events, ev.STEP_TRUNCATED)
    assert cut["reason"] == "max_tokens"
    assert "prompt is too long" in cut["continuation_error"]
    assert "overloaded" in cut["continuation_error"].lower()


async def test_a_continuation_every_window_refuses_is_cut_by_the_window(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("anthropic", FIRST_PART, wire_of.error_body(400, ANTHROPIC_TOO_LONG))
    fake.script("openai", wire_of.error_body(400, OPENAI_TOO_LONG))

    run, events = await run_steps(
        fake_api,
        step("Long", ["anthropic:claude", "openai:gpt-4.1"], max_tokens=8, auto_continue=1),
    )

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].finish_reason == "context_window"
    (cut,) = of_type(events, ev.STEP_TRUNCATED)
    assert cut["reason"] == "context_window" and "continuation_error" not in cut


async def test_a_first_request_no_provider_answers_still_fails_the_step(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("anthropic", *[Reply(error="overloaded") for _ in range(3)])

    run, _ = await run_steps(
        fake_api, step("Long", ["anthropic:claude"], max_tokens=8, auto_continue=1)
    )

    assert run.status == ev.FAILED
    assert "overloaded" in run.steps[0].error.lower()


def _ended_then_dropped(wire: str) -> Raw:
    """The provider's end marker (message_stop; finish_reason and usage; finishReason), then
    the connection breaks: no [DONE], no end of the body."""
    pieces = ["whole ", "answer"]
    if wire == "anthropic":
        return Raw(wire_of.anthropic(pieces), drop=True)
    if wire == "openai":
        return Raw(wire_of.openai(pieces)[:-1], drop=True)
    return Raw([wire_of.gemini_chunk("whole "), wire_of.gemini_chunk("answer", "STOP")], drop=True)


@pytest.mark.parametrize("wire", ["anthropic", "openai", "google"])
async def test_an_answer_ended_before_its_connection_broke_is_kept(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """The whole answer had come; the break after it was taken for a cut stream: retried
    (and paid for) until the provider's attempts ran out, then the step failed."""
    fake.script(wire, *[_ended_then_dropped(wire) for _ in range(3)])

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m"]))

    assert run.status == ev.COMPLETED, run.error
    done = run.steps[0]
    assert (done.output, done.finish_reason, done.input_tokens) == ("whole answer", "stop", 11)
    assert done.output_tokens == (2 if wire == "google" else 5)  # Gemini's chunks: no count
    assert fake.count(wire) == 1
    assert streamed_text(events) == done.output


@pytest.mark.parametrize("wire", ["anthropic", "openai"])
async def test_an_answer_broken_before_its_end_is_still_retried(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    cut = wire_of.anthropic if wire == "anthropic" else wire_of.openai
    fake.script(wire, Raw(cut(["whole "], ends=False), drop=True), wire_of.answer(wire, ["again"]))

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m"]))

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == "again" == streamed_text(events)
    assert fake.count(wire) == 2


BAD_CHAINS = [
    ("[]", "names no provider"),
    ('["antropic"]', "unknown provider 'antropic'"),
    ('["anthropic:claude", "gemini:pro"]', "unknown provider 'gemini'"),
    ('["local"' + ', "local"' * 8 + "]", "at most 8 providers"),
]


@pytest.mark.parametrize(("chain", "said"), BAD_CHAINS)
def test_an_engine_default_chain_that_cannot_serve_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, chain: str, said: str
) -> None:
    """Taken at start, it failed every step run on it: with an empty error, or one naming
    a provider no step had asked for."""
    monkeypatch.setenv("NYXFLOW_DEFAULT_PROVIDERS", chain)
    with pytest.raises(InvalidArgument) as refused:
        load_settings(EngineSettings)
    assert refused.value.field == "NYXFLOW_DEFAULT_PROVIDERS"
    assert said in refused.value.message

    monkeypatch.setenv("NYXFLOW_DEFAULT_PROVIDERS", '["anthropic:claude", " local "]')
    assert load_settings(EngineSettings).default_providers == ["anthropic:claude", " local "]


async def test_the_engine_does_not_start_on_an_unknown_default_provider() -> None:
    env = {
        **os.environ,
        "NYXFLOW_DEFAULT_PROVIDERS": '["antropic"]',
        # no runs there: an engine that took the chain gives up on runs after a second
        "NYXFLOW_RUNS_ADDR": "127.0.0.1:9",
        "NYXFLOW_RUNS_WAIT_S": "1",
    }
    engine = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nyxflow_engine",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(engine.communicate(), 60)
    finally:
        if engine.returncode is None:
            engine.kill()
            await engine.wait()
    assert engine.returncode == 1
    assert "NYXFLOW_DEFAULT_PROVIDERS: " in err.decode()
    assert "unknown provider 'antropic'" in err.decode()

"""Edges of a provider's answer: where a continuation joins the text so far, a continuation
that fails, an answer finished before its connection broke, the engine's own default chain."""

from __future__ import annotations

import pytest

from nyxflow import events as ev
from tests.support.fake_providers import FakeProviders, Reply
from tests.support.inprocess import Clients
from tests.support.provider_runs import run_steps, step, streamed_text


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

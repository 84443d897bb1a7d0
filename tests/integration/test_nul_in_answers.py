"""A model's answer holding NUL: PostgreSQL text cannot store it, so the step's output holds
U+FFFD in its place (writer.scrub). Its events must say the same: the deltas joined and
step_completed's `output` are what GET /v1/runs gives, not the raw NUL they once carried
(JSON-escaped as \\u0000 in their data, which scrub did not see)."""

from __future__ import annotations

import pytest

from nyxflow import events as ev
from tests.support.fake_providers import FakeProviders, Reply
from tests.support.inprocess import Clients
from tests.support.provider_runs import of_type, run_steps, step, streamed_text


@pytest.mark.parametrize(
    ("answer", "chunk"),
    [
        ("before\x00after, and \x00 the end", 4),
        ("\x00\x00 at each end, split between chunks \x00\x00", 1),
        # Text that looks like an escaped NUL, beside a real one: the text stays as it is.
        ("a backslash-u0000 \\u0000 and a \\\x00 after a backslash", 3),
    ],
    ids=["middle", "ends", "escapes"],
)
async def test_an_answer_holding_nul_streams_what_is_stored(
    fake_api: Clients, fake: FakeProviders, answer: str, chunk: int
) -> None:
    fake.script("openai", Reply(text=answer, chunk=chunk))

    run, events = await run_steps(fake_api, step("Draft", ["openai:m"]))

    assert run.status == ev.COMPLETED, run.error
    stored = run.steps[0].output
    assert stored == answer.replace("\x00", "\ufffd")
    (completed,) = of_type(events, ev.STEP_COMPLETED)
    assert completed["output"] == stored
    assert streamed_text(events) == stored
    assert (await fake_api.runs.get_step(run.steps[0].id)).output == stored

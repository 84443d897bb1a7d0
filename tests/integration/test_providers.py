"""Real provider SDKs against loopback servers speaking each provider's wire format:
streaming, usage, truncation, fallback on credit/quota, retries, dropped streams, secrets."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import create_async_engine

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.models import Run, Step
from tests.support.direct import direct
from tests.support.fake_providers import FakeProviders, Reply
from tests.support.inprocess import ADMIN_KEY, Clients
from tests.support.provider_runs import (
    KEYS,
    engine_on_fake,
    of_type,
    run_steps,
    step,
    streamed_text,
)


@pytest.mark.parametrize(
    ("entry", "wire"),
    [
        ("anthropic:claude-sonnet-4", "anthropic"),
        ("openai:gpt-4.1", "openai"),
        ("google:gemini-2.5-pro", "google"),
        ("openai_compatible:llama3", "openai"),
    ],
)
async def test_streamed_completion_per_provider(
    fake_api: Clients, fake: FakeProviders, entry: str, wire: str
) -> None:
    answer = "Streaming answers arrive in many small chunks, joined in order."
    fake.script(wire, Reply(text=answer, chunk=5, input_tokens=21, output_tokens=13))

    run, events = await run_steps(fake_api, step("Draft", [entry], persona="Nemesis"))

    assert run.status == ev.COMPLETED, run.error
    done = run.steps[0]
    assert done.output == answer
    assert done.served_by == entry
    assert (done.input_tokens, done.output_tokens) == (21, 13)
    assert (done.finish_reason, done.truncated) == ("stop", False)
    deltas = of_type(events, ev.STEP_DELTA)
    assert len(deltas) > 1 and streamed_text(events) == answer
    request = fake.requests[-1]
    assert request.body.get("model", entry.split(":")[1]) in (entry.split(":")[1], None)
    assert "Nemesis" in json.dumps(request.body) or "adversar" in json.dumps(request.body).lower()


async def test_truncation_at_the_ceiling_is_recorded(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("anthropic", Reply(text="cut off mid", finish="max_tokens", output_tokens=64))

    run, events = await run_steps(fake_api, step("Long", ["anthropic:claude"], max_tokens=64))

    done = run.steps[0]
    assert (done.truncated, done.finish_reason) == (True, "max_tokens")
    assert of_type(events, ev.STEP_TRUNCATED)[0]["limit"] == 64
    assert fake.requests[-1].body["max_tokens"] == 64


async def test_credit_exhausted_falls_back_to_the_next_provider(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The seeds' case: Anthropic out of credit, Gemini serves the step, and both say so."""
    fake.script("anthropic", Reply(error="credit"))
    fake.script("google", Reply(text="Gemini served this."))

    run, events = await run_steps(
        fake_api,
        step("Plan", ["anthropic:claude-sonnet-4", "google:gemini-2.5-pro", "openai:gpt-4.1"]),
    )

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == "Gemini served this."
    assert run.steps[0].served_by == "google:gemini-2.5-pro"
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert fallback["from"] == "anthropic:claude-sonnet-4"
    assert fallback["to"] == "google:gemini-2.5-pro"
    assert "credit balance is too low" in fallback["reason"]
    assert fake.count("anthropic") == 1  # not retried: credit does not come back in seconds
    assert fake.count("openai") == 0


async def test_rate_limited_twice_then_served_without_fallback(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script(
        "openai", Reply(error="rate_limit"), Reply(error="rate_limit"), Reply(text="third time")
    )

    run, events = await run_steps(fake_api, step("Retry", ["openai:gpt-4.1", "google:gemini"]))

    assert run.steps[0].output == "third time"
    assert run.steps[0].served_by == "openai:gpt-4.1"
    assert fake.count("openai") == 3 and fake.count("google") == 0
    assert of_type(events, ev.PROVIDER_FALLBACK) == []


OPENAI_RATE_LIMIT_NAMING_BILLING = (
    "Rate limit reached for gpt-4.1 in organization org-fake on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more. You can increase your "
    "rate limit by adding a payment method to your account at "
    "https://platform.openai.com/account/billing."
)


async def test_a_rate_limit_pointing_at_billing_is_retried_not_passed_on(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The link to the billing page made a rate limit of seconds count as an empty wallet."""
    fake.script(
        "openai",
        Reply(error="rate_limit", message=OPENAI_RATE_LIMIT_NAMING_BILLING),
        Reply(text="second try"),
    )
    fake.script("google", Reply(text="gemini"))

    run, events = await run_steps(fake_api, step("S", ["openai:gpt-4.1", "google:gemini"]))

    assert run.steps[0].output == "second try"
    assert run.steps[0].served_by == "openai:gpt-4.1"
    assert fake.count("openai") == 2 and fake.count("google") == 0
    assert of_type(events, ev.PROVIDER_FALLBACK) == []


@pytest.mark.parametrize("wire", ["anthropic", "openai", "google"])
async def test_a_rate_limit_is_retried_no_sooner_than_the_provider_asked(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    """Backoff alone (10-50 ms here) came back long before the provider's own wait was up."""
    fake.script(wire, Reply(error="rate_limit", retry_after_s=1.2), Reply(text="after the wait"))

    run, _ = await run_steps(fake_api, step("S", [f"{wire}:m"]))

    assert run.steps[0].output == "after the wait"
    first, second = fake.requests
    assert second.at - first.at >= 1.2


@pytest.mark.parametrize("wire", ["anthropic", "openai", "google"])
async def test_a_wait_beyond_the_budget_goes_to_the_next_provider_at_once(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    other = "openai" if wire != "openai" else "anthropic"
    fake.script(wire, Reply(error="rate_limit", retry_after_s=3600))
    fake.script(other, Reply(text="the next one"))

    run, events = await run_steps(fake_api, step("S", [f"{wire}:m", f"{other}:m"]))

    assert run.steps[0].output == "the next one"
    assert fake.count(wire) == 1
    assert len(of_type(events, ev.PROVIDER_FALLBACK)) == 1


def gemini_quota(quota: str, wait_s: float) -> Reply:
    """Gemini's free-tier 429: the same message for every quota, which one in QuotaFailure."""
    return Reply(error="quota", quota_id=f"{quota}-FreeTier", retry_after_s=wait_s)


async def test_gemini_out_of_its_daily_quota_goes_to_the_next_provider_at_once(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("google", gemini_quota("GenerateRequestsPerDayPerProjectPerModel", 20))
    fake.script("openai", Reply(text="served"))

    run, _ = await run_steps(fake_api, step("S", ["google:gemini-2.5-pro", "openai:gpt-4.1"]))

    assert run.steps[0].served_by == "openai:gpt-4.1"
    assert fake.count("google") == 1


async def test_gemini_out_of_its_per_minute_quota_waits_and_is_served(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Its message ("You exceeded your current quota, please check your plan and billing
    details") is the daily one's: only the QuotaFailure says the quota is back in a minute.
    With one provider, the step had failed."""
    fake.script(
        "google",
        gemini_quota("GenerateRequestsPerMinutePerProjectPerModel", 1),
        Reply(text="served after a second"),
    )

    run, _ = await run_steps(fake_api, step("S", ["google:gemini-2.5-pro"]))

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == "served after a second"
    first, second = fake.requests
    assert second.at - first.at >= 1


@pytest.mark.parametrize("wire", ["anthropic", "openai", "google"])
async def test_a_stream_that_stalls_is_given_up_though_its_connection_stays_alive(
    runs_addr: str, fake: FakeProviders, wire: str
) -> None:
    """The SDKs' timeout is per read, and Anthropic pings a stream while it waits: a stalled
    answer held its step, and its run, for as long as the connection lasted."""
    other = "openai" if wire != "openai" else "anthropic"
    fake.script(wire, Reply(text="a start, then a long silence", chunk=8, delay_s=3))
    fake.script(other, Reply(text="the next one"))

    async with engine_on_fake(
        runs_addr, fake.base_url, provider_timeout_s=0.5, provider_attempts=1
    ) as api:
        run, events = await run_steps(api, step("S", [f"{wire}:m", f"{other}:m"]))

    assert run.steps[0].output == "the next one"
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert "no text for 0.5 s (stalled)" in fallback["reason"]


async def test_every_provider_down_fails_the_step_with_each_reason(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("anthropic", Reply(error="auth"))
    fake.script("openai", Reply(error="quota"))
    fake.script("google", *(Reply(error="server") for _ in range(3)))

    run, events = await run_steps(
        fake_api, step("Doomed", ["anthropic:claude", "openai:gpt-4.1", "google:gemini"])
    )

    assert run.status == ev.FAILED
    failed = run.steps[0]
    assert failed.status == ev.FAILED
    for provider in ("anthropic:", "openai:", "google:"):
        assert provider in failed.error
    assert "quota" in failed.error
    assert fake.count("google") == 3  # a 5xx is retried up to the attempt limit
    assert len(of_type(events, ev.PROVIDER_FALLBACK)) == 2


async def test_invalid_request_fails_at_once_with_the_providers_message(
    fake_api: Clients, fake: FakeProviders
) -> None:
    bad = "messages: text content blocks must be non-empty"
    fake.script("anthropic", Reply(error="invalid", message=bad))

    run, events = await run_steps(fake_api, step("Bad", ["anthropic:claude", "google:gemini"]))

    assert run.status == ev.FAILED
    assert bad in run.steps[0].error
    assert fake.count("google") == 0 and of_type(events, ev.PROVIDER_FALLBACK) == []


@pytest.mark.parametrize("wire", ["anthropic", "openai", "google"])
async def test_a_stream_dropped_half_way_is_retried_without_duplicated_text(
    fake_api: Clients, fake: FakeProviders, wire: str
) -> None:
    answer = "one two three four five six seven eight nine ten"
    fake.script(wire, Reply(text=answer, chunk=4, drop_after=3), Reply(text=answer, chunk=4))

    run, events = await run_steps(fake_api, step("Flaky", [f"{wire}:m"]))

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == answer
    assert fake.count(wire) == 2
    assert any(d.get("reset") for d in of_type(events, ev.STEP_DELTA))
    assert streamed_text(events) == answer


async def test_workflow_default_chain_applies_to_steps_naming_none(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("openai", Reply(text="from the workflow's chain"))
    workflow = await fake_api.runs.create_workflow(
        "defaults",
        [pb.StepSpec(name="Plain", kind="llm", prompt="p")],
        default_providers=["openai:gpt-4.1-mini"],
    )
    assert list(workflow.steps[0].providers) == ["openai:gpt-4.1-mini"]
    run = await fake_api.runs.create_run(workflow.id)
    assert fake_api.engine is not None
    _ = [e async for e in fake_api.engine.execute(run.id)]

    done = (await fake_api.runs.get_run(run.id)).steps[0]
    assert done.served_by == "openai:gpt-4.1-mini" and done.output == "from the workflow's chain"


async def test_keys_never_reach_logs_events_or_the_database(
    fake_api: Clients, fake: FakeProviders, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script("anthropic", Reply(error="auth"))
    fake.script("openai", Reply(error="rate_limit"), Reply(text="ok"))

    run, events = await run_steps(fake_api, step("Keys", ["anthropic:claude", "openai:gpt-4.1"]))

    assert run.status == ev.COMPLETED
    sent = fake.requests[0].headers
    key = KEYS["anthropic_api_key"]
    assert key in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            dump = ""
            for table in ("runs", "run_events", "steps", "workflows", "tenants"):
                rows = await connection.execute(text(f"SELECT * FROM {table}"))
                dump += repr(rows.all())
    finally:
        await engine.dispose()
    seen = dump + caplog.text + repr([e.data_json for e in events]) + repr(run)
    for key in KEYS.values():
        assert key not in seen


async def test_the_tenant_default_chain_applies_when_step_and_workflow_name_none(
    fake_api: Clients, fake: FakeProviders
) -> None:
    fake.script("google", Reply(text="from the tenant's chain"))
    admin = AdminClient(fake_api.runs_channel, bearer_metadata(ADMIN_KEY))
    await admin.set_tenant_providers("default", ["google:gemini-2.5-flash"])
    plain = pb.StepSpec(name="Plain", kind="llm", prompt="p")

    workflow = await fake_api.runs.create_workflow("tenant defaults", [plain])
    assert list(workflow.steps[0].providers) == ["google:gemini-2.5-flash"]
    run = await fake_api.runs.create_run(workflow.id)
    assert fake_api.engine is not None
    _ = [e async for e in fake_api.engine.execute(run.id)]
    assert (await fake_api.runs.get_run(run.id)).steps[0].served_by == "google:gemini-2.5-flash"

    # The workflow's own chain wins over the tenant's.
    own = await fake_api.runs.create_workflow("own", [plain], default_providers=["openai:gpt-4.1"])
    assert list(own.steps[0].providers) == ["openai:gpt-4.1"]


@pytest.mark.parametrize(("wire", "kind"), [("anthropic", "overloaded"), ("openai", "server")])
async def test_an_error_inside_the_stream_is_retried_without_duplicated_text(
    fake_api: Clients, fake: FakeProviders, wire: str, kind: str
) -> None:
    """Anthropic's `event: error` (overloaded_error) and OpenAI's `data: {"error": …}` come
    after a 200: the step failed at once as a bad request, never retried or passed on."""
    answer = "one two three four five six seven eight nine ten"
    fake.script(wire, Reply(text=answer, chunk=4, error=kind, error_after=3), Reply(text=answer))

    run, events = await run_steps(fake_api, step("Busy", [f"{wire}:m", "google:gemini"]))

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == answer
    assert run.steps[0].served_by == f"{wire}:m"
    assert fake.count(wire) == 2 and fake.count("google") == 0
    assert any(d.get("reset") for d in of_type(events, ev.STEP_DELTA))
    assert streamed_text(events) == answer


async def test_a_key_gemini_calls_not_valid_falls_back_at_once(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Gemini answers a bad key with 400 INVALID_ARGUMENT, not a 401: the next provider."""
    fake.script("google", Reply(error="auth"))
    fake.script("openai", Reply(text="served by openai"))

    run, events = await run_steps(
        fake_api, step("Plan", ["google:gemini-2.5-pro", "openai:gpt-4.1"])
    )

    assert run.status == ev.COMPLETED, run.steps[0].error
    assert run.steps[0].served_by == "openai:gpt-4.1"
    (fallback,) = of_type(events, ev.PROVIDER_FALLBACK)
    assert "API key not valid" in fallback["reason"]
    assert fake.count("google") == 1


async def test_an_anthropic_continuation_joins_without_doubling_the_whitespace_at_the_cut(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The prefill goes without its trailing whitespace (the API refuses it), so the model
    answers the join's whitespace again: it appeared twice in the output."""
    fake.script(
        "anthropic",
        Reply(text="## One\nfirst part\n\n", finish="max_tokens"),
        Reply(text="\n\n## Two\nsecond part"),  # goes on right after "first part"
    )

    run, events = await run_steps(
        fake_api, step("Long", ["anthropic:claude"], max_tokens=8, auto_continue=1)
    )

    assert fake.requests[-1].body["messages"][-1] == {
        "role": "assistant",
        "content": "## One\nfirst part",
    }
    assert run.steps[0].output == "## One\nfirst part\n\n## Two\nsecond part"
    assert streamed_text(events) == run.steps[0].output


async def test_a_continuation_retried_mid_stream_keeps_the_first_part_on_screen(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The retry's reset voided everything the step had streamed, the valid first part too:
    followers saw only the second part until the step completed."""
    fake.script(
        "openai",
        Reply(text="first part, ", chunk=4, finish="max_tokens"),
        Reply(text="second part", chunk=4, drop_after=1),
        Reply(text="second part", chunk=4),
    )

    run, events = await run_steps(
        fake_api, step("Long", ["openai:gpt-4.1"], max_tokens=8, auto_continue=1)
    )

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == "first part, second part"
    assert any(d.get("reset") for d in of_type(events, ev.STEP_DELTA))
    assert streamed_text(events) == run.steps[0].output


async def test_a_continuation_served_further_down_the_chain_names_both_providers(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """OpenAI wrote the first part and ran out of quota before the continuation, which
    Anthropic wrote: the step named Anthropic alone as having served the whole answer."""
    fake.script("openai", Reply(text="first part, ", finish="max_tokens"), Reply(error="credit"))
    fake.script("anthropic", Reply(text="second part"))

    run, _ = await run_steps(
        fake_api,
        step("Long", ["openai:gpt-4.1", "anthropic:claude"], max_tokens=8, auto_continue=1),
    )

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].output == "first part, second part"
    assert run.steps[0].served_by == "openai:gpt-4.1, anthropic:claude"


async def test_a_fan_out_names_every_provider_its_items_were_served_by(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Its first item by Anthropic, the second (after Anthropic's credit ran out) by
    Google: the step named only whichever item finished last."""
    chain = ["anthropic:claude", "google:gemini"]
    fake.script(
        "anthropic",
        Reply(text="# A\n\nx\n\n# B\n\ny\n"),
        Reply(text="item by claude"),
        Reply(error="credit"),
    )
    fake.script("google", Reply(text="item by gemini"))
    each = pb.StepSpec(
        name="Each",
        kind="fan_out",
        prompt="{{ item }}",
        source="Source",
        providers=chain,
        concurrency=1,
    )

    run, _ = await run_steps(fake_api, step("Source", chain), each)

    assert run.status == ev.COMPLETED, run.error
    fanned = run.steps[1]
    assert [i.served_by for i in fanned.items] == ["anthropic:claude", "google:gemini"]
    assert fanned.served_by == "anthropic:claude, google:gemini"


async def test_an_alternative_cut_at_max_tokens_is_announced(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Only the selected alternative's cut had an event: another one, cut, was stored so but
    said nothing until it was chosen, and then nothing either."""
    fake.script(
        "anthropic", Reply(text="a whole answer"), Reply(text="a cut answer", finish="max_tokens")
    )

    run, events = await run_steps(
        fake_api, step("Draft", ["anthropic:claude"], alternatives=2, max_tokens=100)
    )

    assert run.status == ev.COMPLETED, run.error
    cut = [a.index for a in run.steps[0].alternatives if a.truncated]
    assert len(cut) == 1
    (completed,) = of_type(events, ev.STEP_COMPLETED)
    assert completed["truncated_alternatives"] == cut


@pytest.mark.parametrize("owner", ["workflow", "tenant"])
async def test_the_generated_consistency_check_falls_back_to_the_default_chain(
    fake_api: Clients, fake: FakeProviders, owner: str
) -> None:
    """A synthesis set to one provider (the way round an out-of-credit one) handed that one
    alone to the consistency check it generated: that provider's quota then failed the check
    and the run, with the workflow's chain never tried (and then, the tenant's)."""
    assert fake_api.engine is not None
    chain = ["anthropic:claude", "google:gemini-2.5-pro", "openai:gpt-4.1"]
    if owner == "tenant":
        admin = AdminClient(fake_api.runs_channel, bearer_metadata(ADMIN_KEY))
        await admin.set_tenant_providers("default", chain)
    plan, prompt = Reply(text="# Part one\n\nDo it.\n"), Reply(text="prompt one")
    fake.script("google", plan, prompt, Reply(error="quota"))
    fake.script("anthropic", Reply(error="credit"))  # out of credit, as the chain's first
    fake.script("openai", Reply(text="VERDICT: consistent\n"))
    workflow = await fake_api.runs.create_workflow(
        "checked",
        [
            pb.StepSpec(
                name="Synthesis",
                kind="synthesis",
                prompt="Plan it.",
                generates="implementation_prompt",
                providers=["google:gemini-2.5-pro"],
            )
        ],
        True,
        default_providers=chain if owner == "workflow" else (),
    )
    run = await fake_api.runs.create_run(workflow.id)
    [e async for e in fake_api.engine.execute(run.id)]

    done = await fake_api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    check = done.steps[-1]
    assert check.kind == "consistency_check" and check.served_by == "openai:gpt-4.1"
    assert list(check.providers) == [
        "google:gemini-2.5-pro",
        "anthropic:claude",
        "openai:gpt-4.1",
    ]


async def test_one_alternative_failing_stops_the_others(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """One of two alternatives meets a bad request, which fails the step; the other met an
    overload and waits to retry. It went on retrying, on the provider's account, after the
    step had failed."""
    fake.script("anthropic", Reply(error="invalid"), Reply(error="overloaded"), Reply())
    run, _ = await run_steps(fake_api, step("Both", ["anthropic:claude"], alternatives=2))

    assert run.status == ev.FAILED
    await asyncio.sleep(0.5)  # longer than the retry's backoff (0.05 s at most)
    assert fake.count("anthropic") == 2


async def test_a_fan_out_resumed_with_every_item_stored_names_who_served_them(
    fake_api: Clients, fake: FakeProviders, database_url: str
) -> None:
    """Anthropic out of credit, Google serves every item; the engine dies after the last
    item is stored, before the step completes. Resumed, the fan-out runs no item, and named
    the chain's first provider, the one out of credit, as having served it."""
    chain = ["anthropic:claude", "google:gemini"]
    fake.script("anthropic", Reply(text="# A\n\nx\n\n# B\n\ny\n"), *[Reply(error="credit")] * 4)
    fake.script("google", *[Reply(text="item by gemini")] * 4)
    source = step("Source", chain)
    each = pb.StepSpec(
        name="Each", kind="fan_out", prompt="{{ item }}", source="Source", providers=chain
    )
    run, _ = await run_steps(fake_api, source, each)
    assert run.status == ev.COMPLETED, run.error
    fanned = run.steps[1]
    assert fanned.served_by == "google:gemini"
    assert [i.served_by for i in fanned.items] == ["google:gemini"] * 2
    # What an engine killed between the last item and the step's end leaves behind.
    async with direct(database_url) as db, db.sessions.begin() as session:
        await session.execute(
            update(Step)
            .where(Step.id == fanned.id)
            .values(status=ev.PENDING, output=None, served_by=None)
        )
        await session.execute(update(Run).where(Run.id == run.id).values(status=ev.FAILED))

    resumed = await fake_api.runs.resume_workflow(run.workflow_id)
    assert fake_api.engine is not None
    [e async for e in fake_api.engine.execute(resumed.id)]

    after = await fake_api.runs.get_run(resumed.id)
    assert after.status == ev.COMPLETED, after.error
    assert after.steps[1].served_by == "google:gemini"

"""A step executed again leaves nothing made from its old output behind: the steps a synthesis
generated from its old plan, the items a half-done fan-out made from its old source."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nyxflow import events as ev
from nyxflow.errors import FailedPrecondition
from nyxflow.v1 import common_pb2 as pb
from tests.support.direct import direct
from tests.support.eventually import eventually
from tests.support.fake_providers import Reply, fake_providers
from tests.support.inprocess import Clients, runs_service
from tests.support.provider_runs import engine_on_fake

CUT_PLAN = "## Auth\nlogin flow\n\n## Billing\ninvoices\n"
FULL_PLAN = CUT_PLAN + "\n## Search\nfull-text index\n"

OLD_TOPICS = "## Alpha\nalpha body\n\n## Beta\nbeta body\n\n## Gamma\ngamma body\n"
NEW_TOPICS = "## Xray\nxray body\n\n## Yankee\nyankee body\n\n## Zulu\nzulu body\n"


async def execute(api: Clients, run_id: str) -> list[pb.RunEvent]:
    assert api.engine is not None
    return [e async for e in api.engine.execute(run_id)]


async def pause_at_first_item(api: Clients, database_url: str, run: pb.Run) -> pb.Run:
    """Execute `run` and pause it once its fan-out has finished an item (not all of them)."""
    execution = asyncio.create_task(execute(api, run.id))
    async with direct(database_url) as db:
        await eventually(
            lambda: db.events(run.tenant_id, run.id),
            lambda es: any(e.type == ev.FAN_OUT_PROGRESS for e in es),
            what="a first item done",
        )
    await api.runs.pause_run(run.id)
    await asyncio.wait_for(execution, 10)
    paused = await api.runs.get_run(run.id)
    assert paused.status == ev.PAUSED, (paused.status, paused.error)
    return paused


def expand_each(**fields: Any) -> pb.StepSpec:
    """The fan-out `Each` over `Topics`'s headings, an item at a time."""
    return pb.StepSpec(
        name="Each",
        kind="fan_out",
        prompt="Expand {{ item }}",
        source="Topics",
        concurrency=1,
        **fields,
    )


def headings(output: str) -> list[str]:
    return [line[3:].strip() for line in output.splitlines() if line.startswith("## ")]


async def test_a_retried_synthesis_generates_prompts_from_its_new_plan(database_url: str) -> None:
    """The seeds' users retry a plan cut at max_tokens with a bigger one. The prompts made from
    the cut plan stayed completed and the new plan made none: its third item had no prompt."""
    async with (
        fake_providers() as fake,
        runs_service(database_url) as rs,
        engine_on_fake(rs.runs_listen, fake.base_url) as api,
    ):
        fake.script(
            "anthropic",
            Reply(text=CUT_PLAN, finish="max_tokens"),
            Reply(text="prompt for auth, cut plan"),
            Reply(text="prompt for billing, cut plan"),
            Reply(text=FULL_PLAN),
            Reply(text="prompt for auth"),
            Reply(text="prompt for billing"),
            Reply(text="prompt for search"),
        )
        plan = pb.StepSpec(
            name="Plan",
            kind="synthesis",
            prompt="Plan the work.",
            providers=["anthropic:claude-x"],
            generates="implementation_prompt",
            max_tokens=100,
        )
        workflow = await api.runs.create_workflow("plan", [plan])
        run = await api.runs.create_run(workflow.id)
        await execute(api, run.id)
        first = await api.runs.get_run(run.id)
        assert first.status == ev.COMPLETED and first.steps[0].truncated
        assert [s.auto_generated for s in first.steps] == [False, True, True]

        retried = await api.runs.retry_step(first.steps[0].id, max_tokens=16384)

        # What the cut plan generated goes with it at once, not only once the plan is redone.
        assert [s.name for s in (await api.runs.get_run(retried.id)).steps] == ["Plan"]
        await execute(api, retried.id)
        done = await api.runs.get_run(retried.id)
        assert done.status == ev.COMPLETED, done.error
        assert done.steps[0].output == FULL_PLAN and not done.steps[0].truncated
        prompts = done.steps[1:]
        assert [s.name.split(": ")[-1] for s in prompts] == ["Auth", "Billing", "Search"]
        assert not {s.id for s in prompts} & {s.id for s in first.steps}
        assert [s.output for s in prompts] == [
            "prompt for auth",
            "prompt for billing",
            "prompt for search",
        ]
        assert [s.order for s in done.steps] == [0, 1, 2, 3]


async def test_a_half_done_fan_out_takes_its_items_from_the_retried_source(
    database_url: str,
) -> None:
    """A fan-out paused after some items, then its source retried: the finished items were made
    from the old source, and were kept by index beside the new ones (Alpha, Beta, Zulu)."""
    async with (
        fake_providers() as fake,
        runs_service(database_url) as rs,
        engine_on_fake(rs.runs_listen, fake.base_url) as api,
    ):
        fake.script("anthropic", Reply(text=OLD_TOPICS), Reply(text=NEW_TOPICS))
        topics = pb.StepSpec(
            name="Topics", kind="llm", prompt="List them.", providers=["anthropic:claude-x"]
        )
        each = expand_each(
            providers=["local"], params_json=json.dumps({"tokens": 5, "token_delay_ms": 150})
        )
        workflow = await api.runs.create_workflow("fan", [topics, each])
        paused = await pause_at_first_item(
            api, database_url, await api.runs.create_run(workflow.id)
        )
        assert 0 < len(paused.steps[1].items) < 3

        retried = await api.runs.retry_step(paused.steps[0].id, max_tokens=8192)

        # The finished items stay until the fan-out checks their input against the new source.
        events = await execute(api, retried.id)
        done = await api.runs.get_run(retried.id)
        assert done.status == ev.COMPLETED, done.error
        assert done.steps[0].output == NEW_TOPICS
        fan = done.steps[1]
        assert [i.heading for i in fan.items] == ["Xray", "Yankee", "Zulu"]
        assert all("alpha" not in i.output.lower() for i in fan.items)
        progress = [json.loads(e.data_json) for e in events if e.type == ev.FAN_OUT_PROGRESS]
        assert sorted(p["index"] for p in progress) == [0, 1, 2]
        assert fan.output_tokens == sum(i.output_tokens for i in fan.items)


async def test_a_half_done_fan_out_takes_its_items_from_the_chosen_alternative(
    api: Clients, database_url: str
) -> None:
    """Choosing another alternative of the source changes the items a paused fan-out is made
    from: the ones it finished from the first are dropped, and resume makes every item anew."""
    topics = pb.StepSpec(
        name="Topics",
        kind="llm",
        prompt="List them.",
        alternatives=2,
        params_json=json.dumps({"items": 3, "tokens": 30}),
    )
    each = expand_each(params_json=json.dumps({"tokens": 5, "token_delay_ms": 150}))
    workflow = await api.runs.create_workflow("fan-alt", [topics, each])
    paused = await pause_at_first_item(api, database_url, await api.runs.create_run(workflow.id))
    assert 0 < len(paused.steps[1].items) < 3
    source = paused.steps[0]
    assert source.alternatives[0].output != source.alternatives[1].output

    await api.runs.select_alternative(source.id, 1)

    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)
    done = await api.runs.get_run(resumed.id)
    assert done.status == ev.COMPLETED, done.error
    assert [i.heading for i in done.steps[1].items] == headings(source.alternatives[1].output)
    progress = [json.loads(e.data_json) for e in events if e.type == ev.FAN_OUT_PROGRESS]
    assert sorted(p["index"] for p in progress) == [0, 1, 2]


def plan_with_alternatives() -> pb.StepSpec:
    """A synthesis whose two alternatives are two plans, each generating its prompts."""
    return pb.StepSpec(
        name="Plan",
        kind="synthesis",
        prompt="Plan the work.",
        alternatives=2,
        generates="implementation_prompt",
        params_json=json.dumps({"items": 3, "tokens": 30}),
    )


async def test_a_chosen_plan_replaces_the_prompts_generated_from_the_old_one(
    api: Clients,
) -> None:
    """A finished plan's other alternative chosen: its prompts (and the check over them) were
    those of the first plan, completed, and stayed so; the workflow read completed with a plan
    that made no prompts. They go at once, a paused run tells what went, and resume generates
    and runs the chosen plan's prompts."""
    plan = plan_with_alternatives()
    workflow = await api.runs.create_workflow("plan-alt", [plan], consistency_check=True)
    first = await api.runs.create_run(workflow.id)
    await execute(api, first.id)
    ran = await api.runs.get_run(first.id)
    assert ran.status == ev.COMPLETED, ran.error
    old_block = ran.steps[1:]
    assert len(old_block) == 4 and all(s.status == ev.COMPLETED for s in old_block)
    chosen = ran.steps[0].alternatives[1].output
    assert chosen != ran.steps[0].output

    selected = await api.runs.select_alternative(ran.steps[0].id, 1)

    assert selected.selected_index == 1 and selected.output == chosen
    after = await api.runs.get_workflow(workflow.id)
    assert [s.name for s in after.steps] == ["Plan"]
    assert after.status == ev.PAUSED and after.last_run_id != first.id
    marked = [e async for e in api.runs.watch_run(after.last_run_id)]
    assert [e.type for e in marked] == [ev.ALTERNATIVE_SELECTED, ev.RUN_PAUSED]
    note = json.loads(marked[0].data_json)
    assert (note["index"], note["previous_index"]) == (1, 0)
    assert [(d["name"], d["status"]) for d in note["dropped"]] == [
        (s.name, ev.COMPLETED) for s in old_block
    ]
    # Choosing the alternative in use again changes nothing and records nothing.
    await api.runs.select_alternative(ran.steps[0].id, 1)
    assert (await api.runs.get_workflow(workflow.id)).last_run_id == after.last_run_id

    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)
    done = await api.runs.get_run(resumed.id)
    assert done.status == ev.COMPLETED, done.error
    assert any(e.type == ev.STEPS_GENERATED for e in events)
    prompts = [s for s in done.steps if s.kind == "implementation_prompt"]
    assert [s.name.split(": ", 1)[-1] for s in prompts] == headings(chosen)
    assert all(s.status == ev.COMPLETED and s.output for s in done.steps)
    assert [s.kind for s in done.steps][-1] == "consistency_check"
    assert not {s.id for s in done.steps} & {s.id for s in old_block}
    assert done.steps[0].output == chosen and done.steps[0].selected_index == 1


async def test_a_chosen_alternative_resets_the_completed_steps_made_from_the_old_one(
    api: Clients,
) -> None:
    """Another draft chosen after the run: the summary of the old draft (and what read the
    summary, and the check over every output) stayed completed, so resume ran nothing and the
    workflow showed a summary of a draft no longer chosen. Steps that do not read it stay."""
    tokens = {"tokens": 6}
    steps = [
        pb.StepSpec(
            name="Draft", kind="llm", prompt="Write.", alternatives=2,
            params_json=json.dumps(tokens),
        ),
        pb.StepSpec(
            name="Aside", kind="llm", prompt="Unrelated.", params_json=json.dumps(tokens)
        ),
        pb.StepSpec(
            name="Summary", kind="llm", prompt="Sum up {{ steps.Draft.output }}",
            params_json=json.dumps(tokens),
        ),
        pb.StepSpec(
            name="Title", kind="llm", prompt="Title for {{ steps.Summary.output }}",
            params_json=json.dumps(tokens),
        ),
        pb.StepSpec(name="Check", kind="consistency_check", params_json=json.dumps(tokens)),
    ]  # fmt: skip
    workflow = await api.runs.create_workflow("draft-alt", steps)
    first = await api.runs.create_run(workflow.id)
    await execute(api, first.id)
    ran = await api.runs.get_run(first.id)
    assert ran.status == ev.COMPLETED, ran.error
    before = {s.name: s for s in ran.steps}

    await api.runs.select_alternative(before["Draft"].id, 1)

    after = await api.runs.get_workflow(workflow.id)
    status = {s.name: (s.status, s.output) for s in after.steps}
    assert status["Aside"] == (ev.COMPLETED, before["Aside"].output)
    assert status["Draft"] == (ev.COMPLETED, before["Draft"].alternatives[1].output)
    for name in ("Summary", "Title", "Check"):
        assert status[name] == (ev.PENDING, ""), name
    assert after.status == ev.PAUSED
    marked = [e async for e in api.runs.watch_run(after.last_run_id)]
    note = json.loads(marked[0].data_json)
    assert [r["name"] for r in note["reset"]] == ["Summary", "Title", "Check"]
    assert note["dropped"] == []
    # Named as the page's tabs count them (from 1), with the API's index.
    paused = await api.runs.get_run(after.last_run_id)
    assert paused.error.startswith("alternative 2 (index 1) of 'Draft' chosen: the 3 later")

    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)
    done = {s.name: s for s in (await api.runs.get_run(resumed.id)).steps}
    started = [json.loads(e.data_json)["name"] for e in events if e.type == ev.STEP_STARTED]
    assert started == ["Summary", "Title", "Check"]
    assert all(s.status == ev.COMPLETED and s.output for s in done.values())
    assert done["Summary"].output != before["Summary"].output
    assert done["Aside"].output == before["Aside"].output


async def test_a_chosen_alternative_drops_the_prompts_of_a_later_plan_made_from_it(
    api: Clients,
) -> None:
    """A later plan read the draft: reset, the prompts it generated from the old draft go too
    (kept, they sat completed after a pending plan, and its new plan made none)."""
    draft = pb.StepSpec(
        name="Draft", kind="llm", prompt="Write.", alternatives=2,
        params_json=json.dumps({"tokens": 6}),
    )  # fmt: skip
    plan = pb.StepSpec(
        name="Plan",
        kind="synthesis",
        prompt="Plan from {{ steps.Draft.output }}",
        generates="implementation_prompt",
        params_json=json.dumps({"items": 2, "tokens": 20}),
    )
    workflow = await api.runs.create_workflow("draft-plan", [draft, plan])
    first = await api.runs.create_run(workflow.id)
    await execute(api, first.id)
    ran = await api.runs.get_run(first.id)
    assert [s.auto_generated for s in ran.steps] == [False, False, True, True]

    await api.runs.select_alternative(ran.steps[0].id, 1)

    after = await api.runs.get_workflow(workflow.id)
    assert [(s.name, s.status) for s in after.steps] == [
        ("Draft", ev.COMPLETED), ("Plan", ev.PENDING)
    ]  # fmt: skip
    marked = [e async for e in api.runs.watch_run(after.last_run_id)]
    note = json.loads(marked[0].data_json)
    assert [d["step_id"] for d in note["dropped"]] == [s.id for s in ran.steps[2:]]
    resumed = await api.runs.resume_workflow(workflow.id)
    await execute(api, resumed.id)
    done = await api.runs.get_run(resumed.id)
    assert done.status == ev.COMPLETED, done.error
    prompts = [s for s in done.steps if s.auto_generated]
    assert [s.name.split(": ", 1)[-1] for s in prompts] == headings(done.steps[1].output)
    assert done.steps[1].output != ran.steps[1].output


async def test_a_run_asked_for_after_a_plan_was_chosen_generates_its_prompts(
    api: Clients,
) -> None:
    """Every step left was completed, so "Run" was refused as having nothing to do (and sent
    the user to a re-run, which throws every result away) while the chosen plan's prompts
    were still to generate."""
    plan = plan_with_alternatives()
    workflow = await api.runs.create_workflow("plan-run", [plan])
    first = await api.runs.create_run(workflow.id)
    await execute(api, first.id)
    ran = await api.runs.get_run(first.id)
    await api.runs.select_alternative(ran.steps[0].id, 1)

    again = await api.runs.create_run(workflow.id)
    await execute(api, again.id)

    done = await api.runs.get_run(again.id)
    assert done.status == ev.COMPLETED, done.error
    prompts = [s for s in done.steps if s.kind == "implementation_prompt"]
    assert [s.name.split(": ", 1)[-1] for s in prompts] == headings(done.steps[0].output)
    with pytest.raises(FailedPrecondition, match="nothing to run"):
        await api.runs.create_run(workflow.id)  # and now there is nothing left to do


async def lock_waiters(sessions: async_sessionmaker[AsyncSession], count: int) -> None:
    """Wait until `count` sessions wait on a lock: the calls are queued behind it, in order
    (a fixed sleep let a stalled machine send the second before the first had queued). Each
    look in a transaction of its own: one sees the activity as it was at its first."""

    async def waiting() -> int:
        query = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        async with sessions() as session:
            return int((await session.execute(query)).scalar_one())

    await eventually(waiting, lambda n: n >= count, what=f"{count} calls waiting on the lock")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_alternatives_chosen_at_once_keep_the_later(
    api: Clients, database_url: str
) -> None:
    """The step was read before the workflow's lock: the second choice, waiting behind the
    first, compared with the output before it, found nothing to change and stored nothing,
    yet answered that its alternative was in use."""
    draft = pb.StepSpec(
        name="Draft",
        kind="llm",
        prompt="Write.",
        alternatives=3,
        params_json=json.dumps({"tokens": 8}),
    )
    workflow = await api.runs.create_workflow("alts", [draft])
    run = await api.runs.create_run(workflow.id)
    await execute(api, run.id)
    step = (await api.runs.get_run(run.id)).steps[0]
    async with direct(database_url) as db, db.sessions.begin() as session:
        # Held as any operation on the workflow holds it: both choices wait, in order.
        await session.execute(
            text("SELECT id FROM workflows WHERE id = :id FOR UPDATE"), {"id": workflow.id}
        )
        first = asyncio.create_task(api.runs.select_alternative(step.id, 1))
        await lock_waiters(db.sessions, 1)
        second = asyncio.create_task(api.runs.select_alternative(step.id, 0))
        await lock_waiters(db.sessions, 2)
    assert (await first).selected_index == 1
    assert (await second).selected_index == 0

    stored = (await api.runs.get_workflow(workflow.id)).steps[0]
    assert (stored.selected_index, stored.output) == (0, step.alternatives[0].output)


TOPICS = "## Alpha\nalpha body\n\n## Beta\nbeta body\n\n## Gamma\ngamma body\n"
LONGER = TOPICS + "\n## Delta\ndelta body\n"


async def test_a_source_run_again_keeps_the_fan_out_items_whose_input_is_unchanged(
    api: Clients, database_url: str
) -> None:
    """The seeds' cut plan, fanned out: paused after its first items, the source retried with
    a bigger max_tokens. The items done whose text is the same in the whole plan (Alpha,
    maybe Beta) are not done again; Gamma (cut before) and Delta (new) are. Every item was
    redone: they carried no record of what they were made from."""
    cut_at = LONGER.index("gamma body") + len("gamma")
    topics = pb.StepSpec(
        name="Topics",
        kind="llm",
        prompt="List them.",
        max_tokens=cut_at,
        params_json=json.dumps({"script": LONGER, "tokens": len(LONGER)}),
    )
    each = expand_each(params_json=json.dumps({"tokens": 5, "token_delay_ms": 150}))
    workflow = await api.runs.create_workflow("fan-cut", [topics, each])
    paused = await pause_at_first_item(api, database_url, await api.runs.create_run(workflow.id))
    cut = ["Alpha", "Beta", "Gamma"]
    assert paused.steps[0].truncated and headings(paused.steps[0].output) == cut
    before = {i.heading: i for i in paused.steps[1].items}
    assert "Alpha" in before and "Gamma" not in before
    assert all(len(i.input_hash) == 64 for i in before.values())

    retried = await api.runs.retry_step(paused.steps[0].id, max_tokens=len(LONGER))
    events = await execute(api, retried.id)

    done = await api.runs.get_run(retried.id)
    assert done.status == ev.COMPLETED, done.error
    assert done.steps[0].output == LONGER
    fan = done.steps[1]
    assert [i.heading for i in fan.items] == [*cut, "Delta"]
    progress = [json.loads(e.data_json) for e in events if e.type == ev.FAN_OUT_PROGRESS]
    redone = [i.index for i in fan.items if i.heading not in before]
    assert sorted(p["index"] for p in progress) == redone  # Alpha is not asked again
    for item in fan.items:
        if item.heading in before:
            kept = before[item.heading]
            assert (item.output, item.input_hash) == (kept.output, kept.input_hash)
    assert fan.output_tokens == sum(i.output_tokens for i in fan.items)


async def test_a_source_run_again_replaces_changed_items_and_drops_those_past_it(
    database_url: str,
) -> None:
    """A fan-out failed at its fourth item; its source, run again, keeps Alpha as it was,
    rewrites Beta and ends there. Alpha is kept, not asked again; Beta is redone and its row
    replaced; Gamma, past the new source, goes when the fan-out ends. Retrying the fan-out
    itself still redoes every item: a retried step really executes."""
    async with (
        fake_providers() as fake,
        runs_service(database_url) as rs,
        engine_on_fake(rs.runs_listen, fake.base_url) as api,
    ):
        shorter = "## Alpha\nalpha body\n\n## Beta\nbeta rewritten\n"
        fake.script("openai", Reply(text=LONGER), Reply(text=shorter))
        fake.script(
            "anthropic",
            Reply(text="alpha done"),
            Reply(text="beta done"),
            Reply(text="gamma done"),
            Reply(error="invalid"),
            Reply(text="beta again"),
            Reply(text="alpha third"),
            Reply(text="beta third"),
        )
        topics = pb.StepSpec(
            name="Topics", kind="llm", prompt="List them.", providers=["openai:gpt-x"]
        )
        each = expand_each(providers=["anthropic:claude-x"])
        workflow = await api.runs.create_workflow("fan-shrink", [topics, each])
        failed = await api.runs.create_run(workflow.id)
        await execute(api, failed.id)
        first = await api.runs.get_run(failed.id)
        assert first.status == ev.FAILED
        outputs = [i.output for i in first.steps[1].items]
        assert outputs == ["alpha done", "beta done", "gamma done"]

        retried = await api.runs.retry_step(first.steps[0].id)
        events = await execute(api, retried.id)

        done = await api.runs.get_run(retried.id)
        assert done.status == ev.COMPLETED, done.error
        fan = done.steps[1]
        assert [(i.heading, i.output) for i in fan.items] == [
            ("Alpha", "alpha done"),
            ("Beta", "beta again"),
        ]
        assert fan.items[0].input_hash == first.steps[1].items[0].input_hash
        assert fan.items[1].input_hash != first.steps[1].items[1].input_hash
        assert fan.output == "alpha done\n\nbeta again"
        progress = [json.loads(e.data_json) for e in events if e.type == ev.FAN_OUT_PROGRESS]
        assert [p["index"] for p in progress] == [1]
        assert fake.count("anthropic") == 5

        again = await api.runs.retry_step(fan.id)
        events = await execute(api, again.id)

        redone = await api.runs.get_run(again.id)
        assert redone.status == ev.COMPLETED, redone.error
        assert [i.output for i in redone.steps[1].items] == ["alpha third", "beta third"]
        assert [e.type for e in events].count(ev.FAN_OUT_PROGRESS) == 2
        assert fake.count("anthropic") == 7

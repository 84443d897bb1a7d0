"""The seeds' workflow engine, each of its bugs pinned: retry, resume, clone, re-run, pause,
cancel, fan-out, generation, alternatives, truncation, tools, personas."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import update

from nyxflow import events as ev
from nyxflow.constants import MAX_STEPS
from nyxflow.errors import FailedPrecondition, InvalidArgument, NotFound
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.cut_off import CUT_OFF, marked
from nyxflow_runs.models import Run, Step
from tests.support.databases import fresh_database
from tests.support.direct import direct
from tests.support.eventually import eventually
from tests.support.inprocess import Clients, clients, runs_service


def spec(name: str, kind: str = "llm", prompt: str = "p", **fields: Any) -> pb.StepSpec:
    params = fields.pop("params", {})
    return pb.StepSpec(
        name=name, kind=kind, prompt=prompt, params_json=json.dumps(params), **fields
    )


async def execute(api: Clients, run_id: str) -> list[pb.RunEvent]:
    assert api.engine is not None
    return [e async for e in api.engine.execute(run_id)]


async def paused_at(api: Clients, run_id: str, progress: str, at: int) -> pb.Run:
    """Execute the run, asking for its pause at the fan_out_progress whose `progress` is `at`
    (what is in flight then finishes, nothing new starts): the run as it was left."""
    assert api.engine is not None
    async for event in api.engine.execute(run_id):
        if event.type == ev.FAN_OUT_PROGRESS and json.loads(event.data_json)[progress] == at:
            await api.runs.pause_run(run_id)
    return await api.runs.get_run(run_id)


async def run_once(api: Clients, workflow_id: str) -> tuple[pb.Run, list[pb.RunEvent]]:
    run = await api.runs.create_run(workflow_id)
    events = await execute(api, run.id)
    return await api.runs.get_run(run.id), events


def started(events: list[pb.RunEvent]) -> list[str]:
    return [json.loads(e.data_json)["name"] for e in events if e.type == ev.STEP_STARTED]


def planning_workflow(consistency: bool = False) -> tuple[str, list[pb.StepSpec], bool]:
    return (
        "plan",
        [
            spec("Outline", params={"items": 3, "tokens": 30}),
            spec(
                "Synthesis",
                "synthesis",
                "Combine: {{ steps.Outline.output }}",
                generates="implementation_prompt",
                params={"items": 3, "tokens": 30},
            ),
        ],
        consistency,
    )


def fan_out_workflow(items: int, source_tokens: int, **fan: Any) -> list[pb.StepSpec]:
    """`Topics` (an outline of `items` headings) and a fan-out `Each` over it."""
    prompt = fan.pop("prompt", "{{ item }}")
    return [
        spec("Topics", params={"items": items, "tokens": source_tokens}),
        spec(fan.pop("name", "Each"), "fan_out", prompt, source="Topics", **fan),
    ]


# --- seed bugs ----------------------------------------------------------------------------


async def test_retry_clears_stale_alternatives_and_really_executes(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "alts", [spec("Draft", alternatives=3, params={"tokens": 8}), spec("Next")]
    )
    run, _ = await run_once(api, workflow.id)
    step = run.steps[0]
    assert len(step.alternatives) == 3 and len({a.output for a in step.alternatives}) == 3
    chosen = await api.runs.select_alternative(step.id, 2)
    assert chosen.selected_index == 2 and chosen.output == step.alternatives[2].output

    retried = await api.runs.retry_step(step.id)

    reset = (await api.runs.get_run(retried.id)).steps[0]
    assert reset.status == ev.PENDING and reset.output == "" and reset.error == ""
    assert list(reset.alternatives) == [] and reset.selected_index == 0
    assert (reset.input_tokens, reset.output_tokens, reset.served_by) == (0, 0, "")
    assert (reset.started_at, reset.finished_at, reset.truncated) == (0, 0, False)
    events = await execute(api, retried.id)
    assert started(events) == ["Draft"]  # Next stays completed; Draft really runs again
    again = (await api.runs.get_run(retried.id)).steps[0]
    assert again.status == ev.COMPLETED and again.selected_index == 0
    assert again.output == again.alternatives[0].output


async def test_resume_runs_pending_synthesis_before_completed_generated_steps(
    api: Clients, database_url: str
) -> None:
    """The seeds' state, as their workaround left it: the synthesis set back to pending by hand,
    the steps generated from it completed, the run paused. Resume really runs the synthesis
    (it was marked completed with no output), and what the new output generates replaces the
    old block: those steps were made from an output that is no more."""
    name, steps, consistency = planning_workflow()
    workflow = await api.runs.create_workflow(name, steps, consistency)
    run, _ = await run_once(api, workflow.id)
    generated = [s for s in run.steps if s.auto_generated]
    assert len(generated) == 3 and all(s.status == ev.COMPLETED for s in generated)
    synthesis = run.steps[1]
    async with direct(database_url) as db, db.sessions.begin() as session:
        await session.execute(
            update(Step).where(Step.id == synthesis.id).values(status=ev.PENDING, output=None)
        )
        await session.execute(update(Run).where(Run.id == run.id).values(status=ev.PAUSED))

    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)

    names = [s.name for s in generated]
    assert started(events) == ["Synthesis", *names]  # the new block's names, freed by the old
    after = await api.runs.get_run(resumed.id)
    assert after.steps[1].status == ev.COMPLETED and after.steps[1].output != ""
    assert after.steps[1].output_tokens > 0
    again = [s for s in after.steps if s.auto_generated]
    assert [s.name for s in again] == names and [s.order for s in again] == [2, 3, 4]
    assert not {s.id for s in again} & {s.id for s in generated}
    assert all(s.status == ev.COMPLETED and s.output for s in after.steps)


async def test_a_retried_synthesis_drops_and_generates_again_its_steps(api: Clients) -> None:
    """A plain retry of a synthesis used to keep the steps it generated, completed: they were
    made from the output the retry replaces, and the new output generated nothing. They go with
    the retry, the synthesis's new output generates them again, and they run; a later
    synthesis's block stays, as every completed step after a plain retry does."""
    name, steps, consistency = planning_workflow(consistency=True)
    steps.append(
        spec(
            "Second synthesis",
            "synthesis",
            "Again: {{ steps.Outline.output }}",
            generates="implementation_prompt",
            params={"items": 2, "tokens": 20},
        )
    )
    workflow = await api.runs.create_workflow(name, steps, consistency)
    run, _ = await run_once(api, workflow.id)
    second = [s.name for s in run.steps].index("Second synthesis")
    first_block, later_block = run.steps[2:second], run.steps[second + 1 :]
    assert [s.kind for s in first_block][-1] == "consistency_check" and len(later_block) == 3

    retried = await api.runs.retry_step(run.steps[1].id)

    fresh = await api.runs.get_run(retried.id)
    kept = ["Outline", "Synthesis", "Second synthesis", *(s.name for s in later_block)]
    assert [s.name for s in fresh.steps] == kept
    assert [s.order for s in fresh.steps] == list(range(len(kept)))
    events = await execute(api, retried.id)
    assert started(events) == ["Synthesis", *(s.name for s in first_block)]
    done = await api.runs.get_run(retried.id)
    assert [s.name for s in done.steps] == [s.name for s in run.steps]
    assert not {s.id for s in done.steps[2:second]} & {s.id for s in first_block}
    assert [s.id for s in done.steps[second + 1 :]] == [s.id for s in later_block]
    assert done.status == ev.COMPLETED
    assert all(s.status == ev.COMPLETED and s.output for s in done.steps)


async def test_duplicate_drops_generated_steps_and_reindexes(api: Clients) -> None:
    name, steps, consistency = planning_workflow(consistency=True)
    workflow = await api.runs.create_workflow(name, steps, consistency, on_orphan="resume")
    run, _ = await run_once(api, workflow.id)
    assert [s.kind for s in run.steps][-1] == "consistency_check"

    copy = await api.runs.duplicate_workflow(workflow.id)

    assert copy.id != workflow.id and copy.name == "plan (copy)"
    assert [s.name for s in copy.steps] == ["Outline", "Synthesis"]
    assert [s.order for s in copy.steps] == [0, 1]
    assert not {s.id for s in copy.steps} & {s.id for s in run.steps}
    assert all(s.status == ev.PENDING and not s.output and not s.auto_generated for s in copy.steps)
    assert copy.steps[1].spec.generates == "implementation_prompt" and copy.consistency_check
    assert copy.on_orphan == ev.ON_ORPHAN_RESUME  # the definition, policy included, is kept


async def test_a_run_is_completed_only_with_every_step_completed(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "fail then resume",
        [spec("a"), spec("b", params={"fail": "transient"}), spec("c")],
    )
    failed, _ = await run_once(api, workflow.id)
    assert failed.status == ev.FAILED
    assert [s.status for s in failed.steps] == [ev.COMPLETED, ev.FAILED, ev.PENDING]
    with pytest.raises(FailedPrecondition, match="failed"):
        await api.runs.pause_run(failed.id)

    # Resume runs b (and would run c): b fails again, so the run is failed, never completed.
    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)
    assert started(events) == ["b"]
    stored = await api.runs.get_run(resumed.id)
    assert stored.status == ev.FAILED and stored.steps[2].status == ev.PENDING


async def test_resume_and_retry_refuse_in_the_wrong_state(api: Clients) -> None:
    workflow = await api.runs.create_workflow("states", [spec("a")])
    with pytest.raises(FailedPrecondition, match="never run"):
        await api.runs.resume_workflow(workflow.id)
    run = await api.runs.create_run(workflow.id)
    with pytest.raises(FailedPrecondition, match="pending"):
        await api.runs.retry_step(run.steps[0].id if run.steps else workflow.steps[0].id)
    with pytest.raises(FailedPrecondition, match="pending"):
        await api.runs.rerun_workflow(workflow.id)
    await execute(api, run.id)
    with pytest.raises(FailedPrecondition, match="completed"):
        await api.runs.resume_workflow(workflow.id)
    with pytest.raises(FailedPrecondition, match="completed"):
        await api.runs.cancel_run(run.id)


# --- operations -----------------------------------------------------------------------------


async def test_rerun_resets_everything_and_drops_generated_steps(api: Clients) -> None:
    name, steps, consistency = planning_workflow()
    workflow = await api.runs.create_workflow(name, steps, consistency)
    await run_once(api, workflow.id)

    rerun = await api.runs.rerun_workflow(workflow.id)
    fresh = await api.runs.get_run(rerun.id)
    assert [s.name for s in fresh.steps] == ["Outline", "Synthesis"]
    assert all(s.status == ev.PENDING and not s.output for s in fresh.steps)
    events = await execute(api, rerun.id)
    assert events[0].type == ev.WORKFLOW_RERUN and events[1].type == ev.RUN_STARTED
    assert started(events)[:2] == ["Outline", "Synthesis"] and len(started(events)) == 5


async def test_retry_from_here_resets_later_steps_and_deletes_generated(api: Clients) -> None:
    name, steps, consistency = planning_workflow()
    steps.insert(0, spec("Intro", params={"tokens": 4}))
    workflow = await api.runs.create_workflow(name, steps, consistency)
    run, _ = await run_once(api, workflow.id)
    outline = run.steps[1]

    retried = await api.runs.retry_step(outline.id, cascade=True)

    fresh = await api.runs.get_run(retried.id)
    assert [s.name for s in fresh.steps] == ["Intro", "Outline", "Synthesis"]
    assert [s.status for s in fresh.steps] == [ev.COMPLETED, ev.PENDING, ev.PENDING]
    assert [s.order for s in fresh.steps] == [0, 1, 2]
    events = await execute(api, retried.id)
    assert started(events)[:2] == ["Outline", "Synthesis"]


async def test_retry_from_a_generated_step_keeps_the_steps_generated_after_it(
    api: Clients,
) -> None:
    """Its synthesis stays completed and will not generate again: dropping the later prompts
    and the check would end the run `completed` without them."""
    name, steps, consistency = planning_workflow(consistency=True)
    workflow = await api.runs.create_workflow(name, steps, consistency)
    run, _ = await run_once(api, workflow.id)
    names = [s.name for s in run.steps]
    second = next(
        s for s in run.steps if s.auto_generated and s.name.startswith("Impl") and s.order == 3
    )

    retried = await api.runs.retry_step(second.id, cascade=True)

    fresh = await api.runs.get_run(retried.id)
    assert [s.name for s in fresh.steps] == names
    assert [s.status for s in fresh.steps][:3] == [ev.COMPLETED] * 3
    assert {s.status for s in fresh.steps[3:]} == {ev.PENDING}
    events = await execute(api, retried.id)
    assert started(events) == names[3:]
    done = await api.runs.get_run(retried.id)
    assert done.status == ev.COMPLETED and [s.name for s in done.steps] == names
    assert all(s.status == ev.COMPLETED and s.output for s in done.steps)


async def test_pause_between_steps_then_resume_completes(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "pausable", [spec(f"s{i}", params={"tokens": 10, "token_delay_ms": 20}) for i in range(4)]
    )
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    stream = api.engine.execute(run.id)
    seen: list[pb.RunEvent] = []
    async for event in stream:
        seen.append(event)
        if event.type == ev.STEP_STARTED:
            requested = await api.runs.pause_run(run.id)
            assert requested.status == ev.RUNNING and requested.pause_requested
    assert seen[-1].type == ev.RUN_PAUSED
    paused = await api.runs.get_run(run.id)
    assert paused.status == ev.PAUSED
    assert [s.status for s in paused.steps] == [ev.COMPLETED] + [ev.PENDING] * 3

    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)
    assert started(events) == ["s1", "s2", "s3"]
    assert (await api.runs.get_run(resumed.id)).status == ev.COMPLETED


async def test_pause_of_a_pending_run_is_immediate(api: Clients) -> None:
    workflow = await api.runs.create_workflow("p", [spec("a")])
    run = await api.runs.create_run(workflow.id)
    paused = await api.runs.pause_run(run.id)
    assert paused.status == ev.PAUSED
    events = [e async for e in api.runs.watch_run(run.id)]
    assert [e.type for e in events] == [ev.RUN_PAUSED]


async def test_cancel_stops_at_once_and_fences_the_engine(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "cancel", [spec("long", params={"tokens": 400, "token_delay_ms": 10}), spec("never")]
    )
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    stream = api.engine.execute(run.id)
    async for event in stream:
        if event.type == ev.STEP_DELTA:
            break
    cancelled = await api.runs.cancel_run(run.id)
    assert cancelled.status == ev.CANCELLED
    assert [s.status for s in cancelled.steps] == [ev.CANCELLED, ev.PENDING]
    last_seq = cancelled.last_seq
    await asyncio.sleep(0.3)  # the engine's next delta write must bounce
    after = await api.runs.get_run(run.id)
    assert after.last_seq == last_seq and after.status == ev.CANCELLED
    events = [e async for e in api.runs.watch_run(run.id)]
    assert events[-1].type == ev.RUN_CANCELLED


async def test_a_cancelled_run_resumes_with_the_steps_it_did_not_complete(api: Clients) -> None:
    """Cancel stops a run; it does not throw its work away: resume starts a new run of the
    steps not completed (the cancelled one included), and the completed one is kept."""
    workflow = await api.runs.create_workflow(
        "cancel-resume",
        [
            spec("a", params={"tokens": 3}),
            spec("b", params={"tokens": 400, "token_delay_ms": 10}),
            spec("c", params={"tokens": 3}),
        ],
    )
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    async for event in api.engine.execute(run.id):
        if event.type == ev.STEP_STARTED and json.loads(event.data_json)["name"] == "b":
            break
    cancelled = await api.runs.cancel_run(run.id)
    assert [s.status for s in cancelled.steps] == [ev.COMPLETED, ev.CANCELLED, ev.PENDING]
    kept = cancelled.steps[0].output

    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)

    assert resumed.id != run.id
    assert started(events) == ["b", "c"]
    done = await api.runs.get_run(resumed.id)
    assert done.status == ev.COMPLETED, done.error
    assert done.steps[0].output == kept and all(s.status == ev.COMPLETED for s in done.steps)
    assert (await api.runs.get_run(run.id)).status == ev.CANCELLED


# --- kinds ----------------------------------------------------------------------------------


async def test_fan_out_persists_each_item_and_reports_progress(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "fan",
        fan_out_workflow(
            13,
            60,
            name="Per topic",
            prompt="Detail this: {{ item }}",
            concurrency=4,
            params={"tokens": 5},
        ),
    )
    run, events = await run_once(api, workflow.id)
    fan = run.steps[1]
    assert fan.status == ev.COMPLETED
    assert [i.index for i in fan.items] == list(range(13))
    assert fan.items[0].heading.startswith("Item 1:")
    assert fan.output == "\n\n".join(i.output for i in fan.items)
    progress = [json.loads(e.data_json) for e in events if e.type == ev.FAN_OUT_PROGRESS]
    assert sorted(p["index"] for p in progress) == list(range(13))
    assert [p["done"] for p in progress] == list(range(1, 14))
    assert {p["total"] for p in progress} == {13}
    # The joined items are not sent again to every follower and stored in the event table.
    done = {d["name"]: d for d in map(json.loads, of(events, ev.STEP_COMPLETED))}
    assert done["Per topic"]["items"] == 13 and "output" not in done["Per topic"]
    assert done["Topics"]["output"] == run.steps[0].output


async def test_a_fan_out_by_headings_skips_hash_lines_in_code_blocks(api: Clients) -> None:
    """A `# comment` in a code block of the source was an item of its own, the top-most
    "heading", and the parts before it were dropped."""
    source = "## Install\n```sh\n# the dependencies\npip install .\n```\n## Test\nRun it.\n"
    workflow = await api.runs.create_workflow(
        "fan",
        [
            spec("Parts", params={"script": source}),
            spec("Each", "fan_out", "{{ item }}", source="Parts", params={"tokens": 3}),
        ],
    )
    run, _ = await run_once(api, workflow.id)

    assert run.status == ev.COMPLETED, run.error
    assert [i.heading for i in run.steps[1].items] == ["Install", "Test"]


def of(events: list[pb.RunEvent], kind: str) -> list[str]:
    return [e.data_json for e in events if e.type == kind]


async def test_fan_out_resume_runs_only_missing_items(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "fan-pause",
        fan_out_workflow(8, 40, concurrency=1, params={"tokens": 5, "token_delay_ms": 15}),
    )
    run = await api.runs.create_run(workflow.id)
    paused = await paused_at(api, run.id, "done", 3)
    assert paused.status == ev.PAUSED and paused.steps[1].status == ev.PENDING
    done_before = {i.index: i.output for i in paused.steps[1].items}
    assert 3 <= len(done_before) < 8

    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)
    progress = [json.loads(e.data_json)["index"] for e in events if e.type == ev.FAN_OUT_PROGRESS]
    assert sorted(progress) == sorted(set(range(8)) - set(done_before))
    final = (await api.runs.get_run(resumed.id)).steps[1]
    assert [i.index for i in final.items] == list(range(8))
    assert all(final.items[i].output == out for i, out in done_before.items())
    # the step's usage counts the items of both executions, each item's kept with it
    assert [i.output_tokens for i in final.items] == [5] * 8
    assert all(i.input_tokens > 0 for i in final.items)
    assert final.output_tokens == 40
    assert final.input_tokens == sum(i.input_tokens for i in final.items)


async def test_synthesis_generates_implementation_prompts_and_consistency_check(
    api: Clients,
) -> None:
    name, steps, _ = planning_workflow()
    workflow = await api.runs.create_workflow(name, steps, consistency_check=True)
    run, events = await run_once(api, workflow.id)
    generated = [s for s in run.steps if s.auto_generated]
    assert [s.kind for s in generated] == ["implementation_prompt"] * 3 + ["consistency_check"]
    assert [s.order for s in run.steps] == list(range(len(run.steps)))
    assert all(s.status == ev.COMPLETED for s in run.steps)
    gen_events = [json.loads(e.data_json) for e in events if e.type == ev.STEPS_GENERATED]
    assert len(gen_events) == 1 and gen_events[0]["count"] == 4
    check = run.steps[-1]
    assert check.output.startswith("VERDICT: consistent")
    completed = [json.loads(e.data_json) for e in events if e.type == ev.STEP_COMPLETED]
    assert completed[-1]["verdict"] == "consistent"
    assert completed[-1]["reviewed"] == ["Synthesis", *(s.name for s in generated[:3])]


async def test_a_generated_prompt_quotes_the_plan_s_template_syntax_as_it_is(
    api: Clients,
) -> None:
    """A plan for a Vue/Jinja/Helm change quotes `{{ … }}`: the generated prompt keeps it and
    the model receives it so (it was rewritten to `{ { … } }`, asking for broken code)."""
    plan = "## Header component\nRender `{{ $t('save') }}` and `{{ user.name }}` in the bar.\n"
    params = {"script": plan, "replies": {"`{{ user.name }}`": "received intact"}}
    workflow = await api.runs.create_workflow(
        "vue",
        [
            spec(
                "Synthesis",
                "synthesis",
                "Plan it.",
                generates="implementation_prompt",
                params=params,
            )
        ],
    )
    run, _ = await run_once(api, workflow.id)
    assert run.status == ev.COMPLETED, run.error
    _, generated = run.steps
    assert generated.auto_generated and generated.kind == "implementation_prompt"
    assert "`{{ $t('save') }}` and `{{ user.name }}`" in generated.prompt
    assert generated.output == "received intact"


async def test_the_prompt_generated_from_where_a_plan_was_cut_says_so(api: Clients) -> None:
    """A plan cut at its token limit generated its last prompt from the cut text without a
    word: the prompt read whole, and the model wrote a prompt for half a part."""
    plan = "## One\nalpha beta gamma\n## Two\ndelta epsilon zeta eta theta iota kappa lambda\n"
    workflow = await api.runs.create_workflow(
        "cut-plan",
        [
            spec(
                "Synthesis",
                "synthesis",
                "Plan it.",
                generates="implementation_prompt",
                params={"script": plan},
                max_tokens=25,  # the local provider's tokens are two characters
            )
        ],
    )
    run, _ = await run_once(api, workflow.id)

    assert run.status == ev.COMPLETED, run.error
    synthesis, first, last = run.steps
    assert synthesis.truncated and not synthesis.output.endswith("lambda")
    assert CUT_OFF not in first.prompt and "cut off" not in first.prompt
    assert "## Two\ndelta" in last.prompt and last.prompt.endswith("\n" + CUT_OFF)
    assert "The plan was cut off within this part" in last.prompt


async def test_an_error_holding_nul_is_recorded_with_the_run(api: Clients) -> None:
    """A provider's message with a NUL in it: PostgreSQL refused the run's end, which was
    never recorded; the run stayed running until swept as an orphan, its error lost."""
    said = spec("said", params={"script": "one\x00two"})
    broke = spec("broke", params={"fail": "bad\x00thing"})
    workflow = await api.runs.create_workflow("nul", [said, broke])

    run, _ = await run_once(api, workflow.id)

    assert run.status == ev.FAILED and "bad\ufffdthing" in run.error, (run.status, run.error)
    assert run.steps[0].status == ev.COMPLETED and run.steps[0].output == "one\ufffdtwo"
    assert run.steps[1].status == ev.FAILED


async def test_truncation_marks_and_auto_continue_joins(api: Clients) -> None:
    cut = spec("cut", params={"tokens": 50}, max_tokens=20)
    joined = spec("joined", params={"tokens": 50}, max_tokens=20, auto_continue=2)
    short = spec("short", params={"tokens": 50}, max_tokens=20, auto_continue=1)
    workflow = await api.runs.create_workflow("trunc", [cut, joined, short])
    run, events = await run_once(api, workflow.id)
    by_name = {s.name: s for s in run.steps}
    assert by_name["cut"].truncated and by_name["cut"].output_tokens == 20
    assert not by_name["joined"].truncated and len(by_name["joined"].output.split()) == 50
    assert by_name["short"].truncated and len(by_name["short"].output.split()) == 40
    marks = [json.loads(e.data_json) for e in events if e.type == ev.STEP_TRUNCATED]
    assert [(m["name"], m["limit"]) for m in marks] == [("cut", 20), ("short", 20)]


async def test_fan_out_items_cut_at_max_tokens_are_marked(api: Clients) -> None:
    replies = {"Item 2:": "an answer far too long for the limit", "Item": "ok"}
    workflow = await api.runs.create_workflow(
        "fan-trunc",
        fan_out_workflow(3, 30, max_tokens=3, params={"tokens": 5, "replies": replies}),
    )
    run, events = await run_once(api, workflow.id)
    fan = run.steps[1]
    assert fan.status == ev.COMPLETED
    assert [i.truncated for i in fan.items] == [False, True, False]  # as stored
    assert fan.truncated and fan.finish_reason == "max_tokens"
    # Joined, the cut item says so (a diff cut between hunks would read whole otherwise).
    first, cut, last = (i.output for i in fan.items)
    assert fan.output == "\n\n".join([first, marked(cut), last])
    assert CUT_OFF in fan.output and CUT_OFF not in cut
    marks = [json.loads(e.data_json) for e in events if e.type == ev.STEP_TRUNCATED]
    assert [(m["name"], m["items"]) for m in marks] == [("Each", [1])]
    progress = [json.loads(e.data_json) for e in events if e.type == ev.FAN_OUT_PROGRESS]
    assert [p["index"] for p in progress if p.get("truncated")] == [1]


async def test_a_failed_fan_out_item_names_the_provider_error(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "fan-fail",
        fan_out_workflow(6, 30, concurrency=3, params={"fail": "credit balance is too low"}),
    )
    run, _ = await run_once(api, workflow.id)
    fan = run.steps[1]
    assert run.status == ev.FAILED and fan.status == ev.FAILED
    assert "credit balance is too low" in fan.error, fan.error
    assert "TaskGroup" not in fan.error and "credit balance is too low" in run.error


async def test_retry_with_a_higher_limit_regenerates_the_truncated_step(api: Clients) -> None:
    """The seeds' fix was an UPDATE in the database, then Retry: one call does both."""
    workflow = await api.runs.create_workflow(
        "raise-limit", [spec("long", params={"tokens": 50}, max_tokens=20)]
    )
    run, _ = await run_once(api, workflow.id)
    step = run.steps[0]
    assert step.truncated and step.output_tokens == 20

    retried = await api.runs.retry_step(step.id, max_tokens=64, auto_continue=1)
    events = await execute(api, retried.id)
    done = (await api.runs.get_run(retried.id)).steps[0]
    assert not done.truncated and len(done.output.split()) == 50
    assert (done.max_tokens, done.spec.auto_continue) == (64, 1)
    marks = [json.loads(e.data_json) for e in events if e.type == ev.STEP_RETRIED]
    assert marks[0]["changed"] == {"max_tokens": 64, "auto_continue": 1}


async def test_retry_with_another_provider_chain_runs_on_it(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "switch-provider", [spec("one", params={"tokens": 4}, providers=["local:model-a"])]
    )
    run, _ = await run_once(api, workflow.id)
    assert run.steps[0].served_by == "local:model-a"

    retried = await api.runs.retry_step(run.steps[0].id, providers=["local:model-b", "local"])
    await execute(api, retried.id)
    done = (await api.runs.get_run(retried.id)).steps[0]
    assert done.served_by == "local:model-b"
    assert list(done.providers) == ["local:model-b", "local"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"auto_continue": 99}, "auto_continue"),
        ({"providers": ["local", "nope"]}, "providers.names[1]"),
        ({"model": "m" * 201}, "model"),
    ],
)
async def test_a_retry_with_a_bad_change_changes_nothing(
    api: Clients, change: dict[str, Any], field: str
) -> None:
    workflow = await api.runs.create_workflow("bad-change", [spec("one", params={"tokens": 4})])
    run, _ = await run_once(api, workflow.id)
    with pytest.raises(InvalidArgument) as refused:
        await api.runs.retry_step(run.steps[0].id, **change)
    assert refused.value.field == field
    after = await api.runs.get_workflow(workflow.id)
    assert after.last_run_id == run.id  # no run queued
    assert after.steps[0].max_tokens == run.steps[0].max_tokens
    assert after.steps[0].status == ev.COMPLETED


async def test_the_longest_model_name_is_stored_in_served_by(api: Clients) -> None:
    """provider:model can outgrow either's own limit; the result write must not fail on it
    (on PostgreSQL it failed the whole group commit, other runs' writes with it)."""
    model = "m" * 200
    workflow = await api.runs.create_workflow(
        "long-model", [spec("one", params={"tokens": 3}, provider="local", model=model)]
    )
    run, _ = await run_once(api, workflow.id)
    assert run.status == ev.COMPLETED, run.error
    assert run.steps[0].served_by == f"local:{model}"


async def test_tools_echo_and_scan_repository(api: Clients, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "app.py").write_text("print('hi')\n")
    (repo / "README.md").write_text("# demo\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    workflow = await api.runs.create_workflow(
        "tools",
        [
            spec("scan", "tool", tool="scan_repository", params={"path": str(repo)}),
            spec("say", "tool", "files: {{ steps.scan.output }}", tool="echo"),
        ],
    )
    run, _ = await run_once(api, workflow.id)
    report = json.loads(run.steps[0].output)
    assert report["files"] == 2 and report["languages"] == {"Python": 1, "Markdown": 1}
    assert run.steps[0].served_by == "tool:scan_repository"
    assert run.steps[1].output.startswith("files: {")


async def test_personas_reach_the_provider(api: Clients) -> None:
    names = {p.name for p in await api.runs.list_personas()}
    assert {"NyxCore", "Athena", "Nemesis", "Ipcha Mistabra", "Aletheia"} <= names
    await api.runs.put_persona(pb.Persona(name="Terse", system_prompt="one two three"))
    workflow = await api.runs.create_workflow(
        "persona", [spec("a", "llm", "x y", persona="Terse"), spec("b", "llm", "x y")]
    )
    run, _ = await run_once(api, workflow.id)
    assert run.steps[0].system_prompt == "one two three"
    assert run.steps[0].input_tokens == run.steps[1].input_tokens + 3


async def test_a_persona_is_stored_as_it_was_checked(api: Clients) -> None:
    """The role's length was checked stripped and stored as sent: 200 characters and three
    spaces passed, answered 203 and were cut to 200 by PostgreSQL (SQLite kept 203)."""
    role = "r" * 200
    saved = await api.runs.put_persona(
        pb.Persona(name="  Padded ", role=f" {role}  ", system_prompt="p")
    )

    assert (saved.name, saved.role) == ("Padded", role)
    (stored,) = [p for p in await api.runs.list_personas() if p.name == "Padded"]
    assert stored.role == role


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([spec("a", prompt="{{ steps.b.output }}"), spec("b")], "steps[0].prompt"),
        ([spec("a", prompt="{{ item }}")], "steps[0].prompt"),
        ([spec("a", prompt="{{ nonsense }}")], "steps[0].prompt"),
        ([spec("a", "fan_out", source="zzz")], "steps[0].source"),
        ([spec("a"), spec("b", "fan_out", source="a", split="words")], "steps[1].split"),
        ([spec("a", persona="Nobody")], "steps[0].persona"),
        ([spec("a", alternatives=99)], "steps[0].alternatives"),
        ([spec("a", generates="implementation_prompt")], "steps[0].generates"),
        ([spec("a", "tool")], "steps[0].tool"),
        ([spec("a", "consistency_check", reviews=["later"])], "steps[0].reviews[0]"),
    ],
)
async def test_invalid_definitions_name_the_field(
    api: Clients, steps: list[pb.StepSpec], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await api.runs.create_workflow("bad", steps)
    assert raised.value.field == field


async def test_delete_refuses_while_active_then_removes_everything(api: Clients) -> None:
    workflow = await api.runs.create_workflow("gone", [spec("a")])
    run = await api.runs.create_run(workflow.id)
    with pytest.raises(FailedPrecondition):
        await api.runs.delete_workflow(workflow.id)
    await execute(api, run.id)
    await api.runs.delete_workflow(workflow.id)
    listed = await eventually(
        api.runs.list_workflows, lambda ws: workflow.id not in {w.id for w in ws}
    )
    assert workflow.id not in {w.id for w in listed}


async def test_a_consistency_check_reviews_the_steps_this_run_completed(api: Clients) -> None:
    """With no `reviews`, every earlier step is reviewed: on a fresh run they completed in this
    very execution, and the check reviewed nothing (the run as claimed had them pending)."""
    workflow = await api.runs.create_workflow(
        "check", [spec("a"), spec("b"), spec("check", "consistency_check", "")]
    )
    run, events = await run_once(api, workflow.id)
    assert run.status == ev.COMPLETED
    check = [json.loads(e.data_json) for e in events if e.type == ev.STEP_COMPLETED][-1]
    assert check["name"] == "check"
    assert check["reviewed"] == ["a", "b"]
    assert check["verdict"] == "consistent"


async def test_a_model_without_a_provider_runs_on_the_default_chain(api: Clients) -> None:
    """The default chain's entry names no model: the step's own was dropped for the
    provider's default (a step's `gpt-4.1` would have reached a local server as its own)."""
    workflow = await api.runs.create_workflow("model", [spec("a", model="llama-x")])
    run, _ = await run_once(api, workflow.id)
    assert run.status == ev.COMPLETED
    assert run.steps[0].served_by == "local:llama-x"


async def test_a_synthesis_that_cannot_be_split_fails_itself_and_resume_runs_it_again(
    api: Clients,
) -> None:
    """Its output has no headings to make implementation prompts from: it was stored completed
    and the run failed after it, so every resume failed at once, executing nothing."""
    workflow = await api.runs.create_workflow(
        "plan",
        [
            spec("Outline", params={"tokens": 5}),
            spec(
                "Synthesis",
                "synthesis",
                "Combine: {{ steps.Outline.output }}",
                generates="implementation_prompt",
                params={"tokens": 5},  # plain words: no heading
            ),
        ],
    )
    run, _ = await run_once(api, workflow.id)
    assert run.status == ev.FAILED
    outline, synthesis = run.steps
    assert outline.status == ev.COMPLETED
    assert synthesis.status == ev.FAILED
    assert "no markdown headings" in synthesis.error
    resumed = await api.runs.resume_workflow(workflow.id)
    again = await execute(api, resumed.id)
    assert started(again) == ["Synthesis"]  # the failed step runs again, the outline does not


@pytest.mark.parametrize(
    ("outline", "parts", "generates", "room"),
    [
        # more parts than a workflow may hold steps: runs refused the generation
        (False, MAX_STEPS + 1, MAX_STEPS + 1, MAX_STEPS - 1),
        # with the outline, the plan and the check, one step too many: the workflow held 501
        (True, MAX_STEPS - 2, MAX_STEPS - 1, MAX_STEPS - 2),
    ],
)
async def test_a_plan_too_big_to_generate_fails_itself_and_a_retry_with_a_lower_limit_runs(
    api: Clients, outline: bool, parts: int, generates: int, room: int
) -> None:
    """A plan with more parts than its workflow has room for was stored completed, then runs
    refused its generation: the run failed with every step completed, and every resume failed
    the same way at once, executing nothing."""
    plan_spec = spec(
        "Plan",
        "synthesis",
        "Combine: {{ steps.Outline.output }}" if outline else "Plan it",
        generates="implementation_prompt",
        params={"items": parts, "tokens": parts},  # one piece per part
    )
    steps = [spec("Outline", params={"tokens": 5}), plan_spec] if outline else [plan_spec]
    workflow = await api.runs.create_workflow("big plan", steps, consistency_check=outline)
    run, events = await run_once(api, workflow.id)

    assert run.status == ev.FAILED
    *before, plan = run.steps
    assert [s.status for s in before] == [ev.COMPLETED] * len(before)
    assert plan.status == ev.FAILED
    assert plan.error.startswith(f"generates: the output splits into {parts} parts")
    assert f"would generate {generates} steps" in plan.error
    assert f"at most {MAX_STEPS} steps" in plan.error and f"room for {room};" in plan.error
    assert plan.error in run.error
    assert ev.STEPS_GENERATED not in [e.type for e in events]

    # A lower limit cuts the plan to a few parts: they are generated and run.
    retried = await api.runs.retry_step(plan.id, max_tokens=3)
    again = await execute(api, retried.id)
    done = await api.runs.get_run(retried.id)
    assert done.status == ev.COMPLETED, done.error
    assert started(again)[0] == "Plan"
    plan, generated = done.steps[len(before)], done.steps[len(before) + 1 :]
    assert 1 + plan.output.count("\n## ") == len(generated) - outline > 1
    assert all(s.auto_generated and s.status == ev.COMPLETED for s in generated)
    assert (generated[-1].kind == "consistency_check") == outline


async def test_two_operations_at_once_one_wins_the_other_is_refused(api: Clients) -> None:
    """A double click: retry-from-here on a generated step and on the first, or an edit of a
    generated step and a re-run, sent together. Both reset (or delete) the same steps: the
    loser must be refused naming the winner's run, never fail inside (a deadlock, an edit of
    a step the other deleted)."""
    name, steps, _ = planning_workflow()
    workflow = await api.runs.create_workflow(name, [*steps, spec("Final")])
    run = await api.runs.create_run(workflow.id)
    pairs = [
        lambda s: (api.runs.retry_step(s[2].id, True), api.runs.retry_step(s[0].id, True)),
        lambda s: (
            api.runs.retry_step(s[2].id, max_tokens=77),
            api.runs.rerun_workflow(workflow.id),
        ),
    ]
    for round_ in range(12):
        await execute(api, run.id)
        current = (await api.runs.get_workflow(workflow.id)).steps
        assert current[2].auto_generated
        results = await asyncio.gather(*pairs[round_ % 2](current), return_exceptions=True)
        won = [r for r in results if isinstance(r, pb.Run)]
        refused = [r for r in results if isinstance(r, FailedPrecondition)]
        assert len(won) == 1 and len(refused) == 1, results
        (run,) = won
        assert f"has an active run {run.id} (pending)" in refused[0].message


async def test_a_run_started_as_its_workflow_is_deleted_is_not_found(tmp_path: Path) -> None:
    """PostgreSQL: the run's insert found the workflow, then waited on its row for the delete
    to commit, and failed its foreign key: an internal error. It is the workflow's NOT_FOUND."""
    async with (
        fresh_database("postgresql", tmp_path) as url,
        runs_service(url) as settings,
        clients(settings.runs_listen) as api,
    ):
        workflow = await api.runs.create_workflow("doomed", [spec("only")])
        deleting = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            async with deleting.transaction():
                await deleting.execute("DELETE FROM workflows WHERE id = $1", workflow.id)
                starting = asyncio.ensure_future(api.runs.create_run(workflow.id))
                await asyncio.sleep(0.5)  # the insert is waiting on the deleted row by now
                assert not starting.done()
            with pytest.raises(NotFound, match=f"workflow {workflow.id} not found"):
                await starting
        finally:
            await deleting.close()


async def test_a_new_persona_saved_twice_at_once_is_saved(api: Clients) -> None:
    """Two tabs (or a client's retry) PUT the same new name: both are answered, one row stays."""
    for round_ in range(4):
        name = f"reviewer-{round_}"
        saved = await asyncio.gather(
            *(
                api.runs.put_persona(pb.Persona(name=name, system_prompt=f"version {i}"))
                for i in range(8)
            )
        )
        assert {p.name for p in saved} == {name}
        mine = [p for p in await api.runs.list_personas() if p.name == name]
        assert len(mine) == 1 and mine[0].system_prompt in {f"version {i}" for i in range(8)}


async def test_a_plan_runs_refuses_to_generate_from_fails_its_synthesis(
    api: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused after the synthesis was stored completed, the run failed with every step
    completed, and each resume generated the same from the same output, refused again."""
    from nyxflow_engine.steps.generation import generated_specs as made

    def refused(*args: Any) -> list[pb.StepSpec]:
        specs = made(*args)
        specs[0].kind = "no_such_kind"  # as any refusal of runs' validation would come
        return specs

    monkeypatch.setattr("nyxflow_engine.execution.generated_specs", refused)
    name, steps, _ = planning_workflow()
    workflow = await api.runs.create_workflow(name, steps)
    run, _ = await run_once(api, workflow.id)

    assert run.status == ev.FAILED
    synthesis = run.steps[1]
    assert synthesis.status == ev.FAILED and "could not be generated" in synthesis.error
    assert "steps[0].kind" in synthesis.error and len(run.steps) == 2

    monkeypatch.setattr("nyxflow_engine.execution.generated_specs", made)
    resumed = await api.runs.resume_workflow(workflow.id)
    events = await execute(api, resumed.id)
    names = started(events)
    assert names[0] == "Synthesis" and len(names) == 4
    assert all(n.startswith(f"Implementation prompt {i}:") for i, n in enumerate(names[1:], 1))
    final = await api.runs.get_run(resumed.id)
    assert final.status == ev.COMPLETED and len(final.steps) == 5


async def test_a_large_fan_out_quoting_its_source_keeps_its_lease(api: Clients) -> None:
    """Each of 10,000 items' whole prompt (the 0.8 MB plan, quoted) was rendered and hashed
    before anything was awaited: 8 to 25 s without a heartbeat, and the live run was swept as an
    orphan in place of failing with its item's own error."""
    workflow = await api.runs.create_workflow(
        "large",
        [
            spec("Outline", params={"items": 10_000}, max_tokens=8192),
            spec(
                "Detail",
                "fan_out",
                "The whole plan:\n{{ steps.Outline.output }}\n\nDetail: {{ item }}",
                source="Outline",
                params={"fail": "the item's own error"},
            ),
        ],
    )
    run, _ = await run_once(api, workflow.id)

    assert run.status == ev.FAILED
    assert "the item's own error" in run.error and "orphan" not in run.error, run.error
    assert run.steps[0].status == ev.COMPLETED


async def test_a_new_run_of_a_workflow_with_every_step_completed_is_refused(
    api: Clients,
) -> None:
    """It "completed" at once, executing nothing: a run that passed for work done."""
    workflow = await api.runs.create_workflow("done", [spec("A"), spec("B")])
    first, _ = await run_once(api, workflow.id)
    assert first.status == ev.COMPLETED

    with pytest.raises(FailedPrecondition, match="every step completed"):
        await api.runs.create_run(workflow.id)

    runs = await api.runs.list_runs(workflow.id)
    assert [r.id for r in runs] == [first.id]  # nothing written
    again = await api.runs.rerun_workflow(workflow.id)  # the way to run it all again
    assert again.status == ev.PENDING

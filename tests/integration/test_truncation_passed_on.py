"""An output cut at its token limit is passed on to later steps marked so (cut_off.py), on both
databases: a cut answer often reads whole, and went into the next prompt as if it were (the
seeds' "Extend & Improve", cut at 8192/8192). What is stored stays as the model wrote it."""

from __future__ import annotations

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.cut_off import CUT_OFF, marked
from tests.integration.test_workflow_semantics import paused_at
from tests.support.fake_providers import FakeProviders, Reply
from tests.support.inprocess import Clients
from tests.support.provider_runs import of_type, run_steps, step

CUT = "# Plan\n\n1. build the parser\n2. wire the "
WHOLE = "Keep the public API."
OPENAI = ["openai:m"]


def prompt_of(fake: FakeProviders, index: int) -> str:
    content = fake.requests[index].body["messages"][-1]["content"]
    assert isinstance(content, str)
    return content


def uses(name: str, prompt: str) -> pb.StepSpec:
    return pb.StepSpec(name=name, kind="llm", prompt=prompt, providers=OPENAI)


def each_in_turn() -> pb.StepSpec:
    """A fan-out `Each` over `Source`, one item at a time: the scripted answers go to the
    items in order."""
    each = pb.StepSpec(name="Each", kind="fan_out", prompt="{{ item }}", source="Source")
    each.providers.extend(OPENAI)
    each.concurrency = 1
    return each


async def cut_then_whole(
    api: Clients, fake: FakeProviders, last: pb.StepSpec, answer: str
) -> pb.Run:
    """Plan, cut at its limit; Rules, whole; then `last`, answered `answer`."""
    fake.script("openai", Reply(text=CUT, finish="max_tokens"), Reply(text=WHOLE), Reply(answer))
    plan, rules = step("Plan", OPENAI, max_tokens=16), step("Rules", OPENAI)
    run, _ = await run_steps(api, plan, rules, last)
    assert run.status == ev.COMPLETED, run.error
    return run


async def test_a_cut_output_goes_into_a_later_prompt_marked_and_is_stored_as_written(
    fake_api: Clients, fake: FakeProviders
) -> None:
    use = uses("Use", "Refine:\n{{ steps.Plan.output }}\nRules:\n{{ steps.Rules.output }}")

    run = await cut_then_whole(fake_api, fake, use, "refined")

    plan, rules, _ = run.steps
    assert (plan.output, plan.truncated) == (CUT, True)  # the mark is not stored
    assert (rules.output, rules.truncated) == (WHOLE, False)
    # The cut one marked where it stops; the whole one as it is.
    assert prompt_of(fake, -1) == f"Refine:\n{marked(CUT)}\nRules:\n{WHOLE}"


async def test_the_consistency_check_reviews_a_cut_output_marked(
    fake_api: Clients, fake: FakeProviders
) -> None:
    check = pb.StepSpec(
        name="Check", kind="consistency_check", providers=OPENAI, reviews=["Plan", "Rules"]
    )

    run = await cut_then_whole(fake_api, fake, check, "VERDICT: inconsistent\n- It stops.")

    assert run.steps[0].output == CUT
    reviewed = prompt_of(fake, -1)
    assert f"### Plan\n{marked(CUT)}\n\n### Rules\n{WHOLE}" in reviewed
    assert reviewed.count(CUT_OFF) == 1


async def test_a_resumed_run_marks_a_stored_cut_output_by_its_flag(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The cut step completed in the first run; the next failed. Resumed, the cut step is
    not run again: its stored flag says it was cut, and the output is passed on marked."""
    fake.script("openai", Reply(text=CUT, finish="max_tokens"), Reply(error="invalid"))
    use = uses("Use", "Refine:\n{{ steps.Plan.output }}")

    run, _ = await run_steps(fake_api, step("Plan", OPENAI, max_tokens=16), use)
    assert run.status == ev.FAILED
    assert prompt_of(fake, -1) == f"Refine:\n{marked(CUT)}"

    fake.script("openai", Reply(text="refined"))
    resumed = await fake_api.runs.resume_workflow(run.workflow_id)
    assert fake_api.engine is not None
    [e async for e in fake_api.engine.execute(resumed.id)]

    after = await fake_api.runs.get_run(resumed.id)
    assert after.status == ev.COMPLETED, after.error
    assert fake.count("openai") == 3  # the cut step was not run again
    assert prompt_of(fake, -1) == f"Refine:\n{marked(CUT)}"
    assert (after.steps[0].output, after.steps[0].truncated) == (CUT, True)


async def test_a_fan_outs_output_marked_by_item_is_not_marked_again(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """A fan-out marks each cut item where it is in its joined output: one mark, for the
    first of two items, and none at the end of the whole."""
    fake.script(
        "openai",
        Reply(text="# A\n\nx\n\n# B\n\ny\n"),
        Reply(text="item A, cut", finish="max_tokens"),
        Reply(text="item B"),
        Reply(text="summed"),
    )
    use = uses("Use", "Sum up:\n{{ steps.Each.output }}")

    run, _ = await run_steps(fake_api, step("Source", OPENAI), each_in_turn(), use)

    assert run.status == ev.COMPLETED, run.error
    assert run.steps[1].truncated
    assert prompt_of(fake, -1) == f"Sum up:\n{marked('item A, cut')}\n\nitem B"


async def test_a_fan_out_resumed_after_its_cut_item_was_stored_is_still_truncated(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """Item A stopped at max_tokens and was stored before the run paused; resumed, only the
    missing item runs. A's stored flag still makes the step truncated, names it in
    step_truncated and marks it where it is in the joined output: it does not pass for a
    complete answer because an earlier execution wrote it."""
    fake.script(
        "openai",
        Reply(text="# A\n\nx\n\n# B\n\ny\n\n# C\n\nz\n"),
        Reply(text="item A, cut", finish="max_tokens"),
        Reply(text="item B", chunk=1, delay_s=0.1),  # in flight as the pause is asked
    )
    workflow = await fake_api.runs.create_workflow("fan", [step("Source", OPENAI), each_in_turn()])
    run = await fake_api.runs.create_run(workflow.id)
    paused = await paused_at(fake_api, run.id, "index", 0)  # the cut item A stored
    assert paused.status == ev.PAUSED, paused.error
    assert [(i.index, i.truncated) for i in paused.steps[1].items] == [(0, True), (1, False)]

    fake.script("openai", Reply(text="item C"))
    resumed = await fake_api.runs.resume_workflow(workflow.id)
    assert fake_api.engine is not None
    events = [e async for e in fake_api.engine.execute(resumed.id)]

    after = await fake_api.runs.get_run(resumed.id)
    assert after.status == ev.COMPLETED, after.error
    assert fake.count("openai") == 4  # only item C ran again
    each = after.steps[1]
    assert (each.truncated, each.finish_reason) == (True, "max_tokens")
    assert each.output == "\n\n".join([marked("item A, cut"), "item B", "item C"])
    marks = of_type(events, ev.STEP_TRUNCATED)
    assert [(m["name"], m["items"]) for m in marks] == [("Each", [0])]


async def test_a_fan_out_over_a_cut_source_tells_its_last_item_where_the_cut_is(
    fake_api: Clients, fake: FakeProviders
) -> None:
    source = "# Parser\n\nBuild it.\n\n# Wiring\n\nWire the "
    fake.script("openai", Reply(text=source, finish="max_tokens"), Reply("a"), Reply("b"))
    each = pb.StepSpec(
        name="Each", kind="fan_out", source="Plan", prompt="Detail: {{ item }}", providers=OPENAI
    )

    run, _ = await run_steps(fake_api, step("Plan", OPENAI, max_tokens=16), each)

    assert run.status == ev.COMPLETED, run.error
    prompts = sorted(prompt_of(fake, i) for i in (1, 2))
    last = marked("# Wiring\n\nWire the")
    assert prompts == ["Detail: # Parser\n\nBuild it.", f"Detail: {last}"]

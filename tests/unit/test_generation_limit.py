"""A synthesis whose output would generate more steps than a workflow may hold fails itself,
naming the count and the limit: stored completed, it left a run that failed after it with every
step completed, and each resume failed the same way."""

from __future__ import annotations

import pytest

from nyxflow.constants import MAX_STEPS
from nyxflow.errors import InvalidArgument
from nyxflow.references import one_line
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.steps.generation import check_generatable, generated_specs


def plan(parts: int) -> str:
    return "".join(f"## Part {i}\nDo {i}.\n```sh\n# not a part\n```\n" for i in range(parts))


def workflow(before: int, generated: int = 0, after: int = 0) -> tuple[pb.Step, list[pb.Step]]:
    """`before` steps, the synthesis, the `generated` steps it made last time, `after` more."""
    steps = [pb.Step(id=f"b{i}", name=f"b{i}", order=i) for i in range(before)]
    synthesis = pb.Step(id="syn", name="Synthesis", order=before, kind="synthesis")
    steps.append(synthesis)
    steps += [
        pb.Step(id=f"g{i}", name=f"g{i}", order=before + 1 + i, auto_generated=True)
        for i in range(generated)
    ]
    steps += [
        pb.Step(id=f"a{i}", name=f"a{i}", order=before + 1 + generated + i) for i in range(after)
    ]
    return synthesis, steps


@pytest.mark.parametrize(
    ("before", "parts", "consistency_check"),
    [(0, MAX_STEPS - 1, False), (0, MAX_STEPS - 2, True), (10, MAX_STEPS - 12, True)],
)
def test_a_plan_that_fills_the_workflow_exactly_is_generatable(
    before: int, parts: int, consistency_check: bool
) -> None:
    synthesis, steps = workflow(before)

    check_generatable(synthesis, plan(parts), steps, consistency_check)


@pytest.mark.parametrize(
    ("before", "parts", "consistency_check", "generates", "room"),
    [
        (0, MAX_STEPS, False, MAX_STEPS, MAX_STEPS - 1),
        (0, MAX_STEPS - 1, True, MAX_STEPS, MAX_STEPS - 1),
        (10, MAX_STEPS - 11, True, MAX_STEPS - 10, MAX_STEPS - 11),
        (0, 2000, False, 2000, MAX_STEPS - 1),
    ],
)
def test_a_plan_with_more_parts_than_room_fails_naming_count_and_limit(
    before: int, parts: int, consistency_check: bool, generates: int, room: int
) -> None:
    synthesis, steps = workflow(before)

    with pytest.raises(InvalidArgument) as refused:
        check_generatable(synthesis, plan(parts), steps, consistency_check)

    assert refused.value.field == "generates"
    message = refused.value.message
    assert f"would generate {generates} steps" in message
    assert f"at most {MAX_STEPS} steps" in message and f"leave room for {room}" in message


def test_the_steps_a_new_output_replaces_make_room_and_later_ones_do_not() -> None:
    synthesis, steps = workflow(0, generated=300, after=2)

    check_generatable(synthesis, plan(MAX_STEPS - 3), steps, False)
    with pytest.raises(InvalidArgument, match="leave room for 497"):
        check_generatable(synthesis, plan(MAX_STEPS - 2), steps, False)


def test_steps_another_synthesis_generated_count() -> None:
    first, steps = workflow(0, generated=200)
    second = pb.Step(id="syn2", name="Synthesis 2", order=len(steps), kind="synthesis")
    steps.append(second)

    with pytest.raises(InvalidArgument, match=r"would generate 300 steps .* leave room for 298"):
        check_generatable(second, plan(300), steps, False)
    check_generatable(first, plan(MAX_STEPS - 2), steps, False)  # its own 200 make room


def test_an_output_without_headings_still_fails_as_before() -> None:
    synthesis, steps = workflow(0)

    with pytest.raises(InvalidArgument, match="no markdown headings") as refused:
        check_generatable(synthesis, "```\n# only a comment\n```", steps, False)
    assert refused.value.field == "generates"


def test_a_generated_name_is_one_line_as_runs_stores_it() -> None:
    """A heading with a tab or an ESC in it: runs stores the name with a space there, and a
    retried generation, compared by name, was taken for another and replaced the block."""
    synthesis, steps = workflow(0)
    synthesis.output = "## Set\tup \x1b[1mthe\x1b[0m db\nDo it.\n"

    (spec,) = generated_specs(synthesis, steps, consistency_check=False)

    assert spec.name == one_line(spec.name)
    assert spec.name.startswith("Implementation prompt 1: Set up ") and "\x1b" not in spec.name

"""Prompt references, as runs validates them and the engine renders them: one definition, so a
name accepted is a name that can be referenced, and a reference accepted is one rendered."""

from __future__ import annotations

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.templating import render
from nyxflow_runs import validation as valid


def _spec(name: str, prompt: str = "p", kind: str = "llm") -> pb.StepSpec:
    return pb.StepSpec(name=name, kind=kind, prompt=prompt)


# The seeds' own step names, and one that ends the way a reference does.
NAMES = ["Extend & Improve", "Überblick", "Plan (v2)", "Step 1.5", "a.output", "steps.x", "a  b"]


@pytest.mark.parametrize("name", NAMES)
def test_a_name_accepted_can_be_referenced_and_renders(name: str) -> None:
    prompt = f"Improve: {{{{ steps.{name}.output }}}} / {{{{steps.{name}.output}}}}"
    valid.step_drafts([_spec(name), _spec("Next", prompt)], set())
    assert render(prompt, {name: "X", "a": "wrong"}) == "Improve: X / X"


def test_the_name_is_all_between_steps_and_the_closing_output() -> None:
    # "a" and "a.output" both exist: each reference reads its own.
    prompt = "{{ steps.a.output }} {{ steps.a.output.output }}"
    valid.step_drafts([_spec("a"), _spec("a.output"), _spec("c", prompt)], set())
    assert render(prompt, {"a": "1", "a.output": "2"}) == "1 2"


@pytest.mark.parametrize("name", ["Plan {v2}", "a}", "{{ item }}", "x{"])
def test_a_name_with_braces_is_refused_saying_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        valid.step_drafts([_spec("ok"), _spec(name)], set())
    assert refused.value.field == "steps[1].name"
    assert 'any character but "{" and "}"' in str(refused.value)


def test_a_reference_to_a_name_not_earlier_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        valid.step_drafts([_spec("Plan (v2)"), _spec("b", "{{ steps.Plan (v3).output }}")], set())
    assert refused.value.field == "steps[1].prompt"
    assert "names no earlier step" in str(refused.value)


def test_a_literal_open_brace_pair_is_written_as_a_reference() -> None:
    prompt = 'Keep {{ "{{" }} user.name }} and {{"{{"}} item }} as they are: {{ steps.a.output }}'
    valid.step_drafts([_spec("a"), _spec("b", prompt)], set())
    assert render(prompt, {"a": "A"}) == "Keep {{ user.name }} and {{ item }} as they are: A"


def test_an_unknown_reference_says_how_to_write_a_literal() -> None:
    with pytest.raises(InvalidArgument) as refused:
        valid.step_drafts([_spec("a", "Render {{ user.name }}")], set())
    assert refused.value.field == "steps[0].prompt"
    assert '{{ "{{" }}' in str(refused.value)


def test_generated_steps_keep_their_heading_and_their_plan() -> None:
    # A generated name quotes a heading, its prompt the plan: neither is read as a reference.
    spec = _spec("Implementation prompt 1: Render {{ user.name }}", "Render {{ user.name }}")
    [draft] = valid.step_drafts([spec], set(), earlier=["Plan"], generated=True)
    assert draft.prompt == "Render {{ user.name }}"


def test_a_retry_knows_which_later_steps_read_a_wide_name() -> None:
    # Their unfinished fan-out items are stale once the step's output changes.
    from nyxflow_runs.models import Step
    from nyxflow_runs.store.operations import _reads

    prompt = "{{ steps.Extend & Improve.output }} {{ steps.Plan (v2).output }}"
    assert _reads(Step(prompt=prompt, config={})) == {"Extend & Improve", "Plan (v2)"}
    assert _reads(Step(prompt=prompt, config={}, auto_generated=True)) == set()

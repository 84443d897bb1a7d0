"""Prompt templates: `{{ steps.<name>.output }}` becomes that step's output and `{{ item }}`
the fan-out item, once; an auto-generated step's prompt is sent as it is."""

from __future__ import annotations

import pytest

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.templating import prompt_of, render


def test_references_are_replaced_by_outputs() -> None:
    outputs = {"scan": "three files", "review": "looks fine"}
    assert (
        render("Scan: {{ steps.scan.output }}; review: {{steps.review.output}}.", outputs)
        == "Scan: three files; review: looks fine."
    )


def test_the_same_reference_twice_is_replaced_twice() -> None:
    assert render("{{ steps.a.output }}/{{ steps.a.output }}", {"a": "x"}) == "x/x"


@pytest.mark.parametrize("name", ["fan-out", "step_2", "Deep Dive"])
def test_names_with_dashes_underscores_and_spaces(name: str) -> None:
    assert render(f"<{{{{ steps.{name}.output }}}}>", {name: "ok"}) == "<ok>"


def test_a_reference_to_an_unknown_step_renders_empty() -> None:
    assert render("before {{ steps.missing.output }} after", {"other": "x"}) == "before  after"


def test_text_without_references_is_unchanged() -> None:
    text = "Use {{ braces }} and {{ steps.a.input }} and steps.a.output literally. {}"
    assert render(text, {"a": "x"}) == text


def test_outputs_are_not_rendered_again() -> None:
    # An output that itself looks like a reference is data, not a template.
    outputs = {"a": "{{ steps.b.output }}", "b": "secret"}
    assert render("{{ steps.a.output }}", outputs) == "{{ steps.b.output }}"


def test_output_with_regex_specials_is_inserted_verbatim() -> None:
    output = r"a\1 b\g<0> $& \n"
    assert render("[{{ steps.a.output }}]", {"a": output}) == f"[{output}]"


def test_item_is_the_fan_out_item() -> None:
    assert render("Expand: {{ item }} (from {{ steps.plan.output }})", {"plan": "P"}, "A") == (
        "Expand: A (from P)"
    )
    assert render("{{item}}", {}, None) == ""


def test_an_item_that_looks_like_a_reference_stays_data() -> None:
    assert render("{{ item }}", {"a": "secret"}, "{{ steps.a.output }}") == "{{ steps.a.output }}"


def test_a_generated_prompt_is_sent_as_it_is() -> None:
    # It quotes a plan: `{{ … }}` there is the plan's (Vue, Jinja), not a reference.
    text = "Render {{ user.name }} and {{ steps.a.output }} and {{ item }}"
    assert prompt_of(pb.Step(prompt=text, auto_generated=True), {"a": "secret"}) == text
    assert prompt_of(pb.Step(prompt=text), {"a": "secret"}) == (
        "Render {{ user.name }} and secret and "
    )

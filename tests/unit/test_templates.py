"""The template file format: YAML and JSON, errors naming the field."""

from __future__ import annotations

import json

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow.templates import parse_template

YAML = """
name: Plan
consistency_check: true
steps:
  - name: Outline
    persona: Athena
    prompt: Outline it.
    alternatives: 2
    params: {items: 3}
  - name: Detail
    kind: fan_out
    source: Outline
    concurrency: 2
    prompt: "Detail: {{ item }}"
"""


def test_yaml_becomes_the_create_request() -> None:
    request = parse_template(YAML).to_request()
    assert request.name == "Plan" and request.consistency_check
    outline, detail = request.steps
    assert (outline.kind, outline.persona, outline.alternatives) == ("llm", "Athena", 2)
    assert json.loads(outline.params_json) == {"items": 3}
    assert (detail.kind, detail.source, detail.concurrency) == ("fan_out", "Outline", 2)


def test_json_is_accepted_too() -> None:
    text = json.dumps({"name": "j", "steps": [{"name": "a", "kind": "tool", "tool": "echo"}]})
    assert parse_template(text).steps[0].tool == "echo"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\nsteps:\n  - name: a\n    kind: magic\n", "steps[0].kind"),
        ("name: x\nsteps:\n  - name: a\n    colour: red\n", "steps[0].colour"),
        ("name: x\nsteps: []\n", "steps"),
        ("steps:\n  - name: a\n", "name"),
        (
            "name: x\nsteps:\n  - name: a\n  - name: b\n    concurrency: 1000\n",
            "steps[1].concurrency",
        ),
        ("- just\n- a list\n", "template"),
        ("name: [unclosed\n", "template"),
    ],
)
def test_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_template(text)
    assert raised.value.field == field


STEP = "name: x\nsteps:\n  - name: a\n"
LAUGHS = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + STEP
)


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        (LAUGHS, "template", "aliases"),  # nine levels of nine: 387 million items written out
        (STEP + "    params: {deep: " + "[" * 500 + "]" * 500 + "}\n", "template", "nested"),
        (STEP + "    params: {blob: !!binary aGk=}\n", "steps[0].params.blob", "bytes"),
        (STEP + "    params: {when: !!timestamp 2024-01-01}\n", "steps[0].params.when", "date"),
        (STEP + "    params: {n: .nan}\n", "steps[0].params.n", "finite"),
        (STEP + "    params: {1: one}\n", "steps[0].params", "keys"),
    ],
)
def test_what_json_cannot_carry_is_refused_naming_where(text: str, field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_template(text)
    assert raised.value.field == field and says in raised.value.message


def test_a_date_stays_text() -> None:
    (step,) = parse_template(STEP + "    params: {since: 2024-01-01}\n").steps
    assert step.params == {"since": "2024-01-01"}

"""A workflow definition that cannot mean what it says is refused at creation, naming the field:
a field its step's kind ignores, a name that is not one line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nyxflow import constants as kinds
from nyxflow import pipelines
from nyxflow.errors import InvalidArgument
from nyxflow.templates import parse_template
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs import validation as valid

PERSONAS = {"Athena", "Nemesis", "Aletheia"}


def _refused(specs: list[pb.StepSpec]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as refused:
        valid.step_drafts(specs, PERSONAS)
    return refused.value


def _after_plan(kind: str, **fields: Any) -> list[pb.StepSpec]:
    """A step of `kind` with `fields` after a plan step, everything else it needs given."""
    needs: dict[str, Any] = {
        "fan_out": {"source": "Plan"},
        "tool": {"tool": "echo"},
    }.get(kind, {})
    return [
        pb.StepSpec(name="Plan", kind="llm"),
        pb.StepSpec(name="b", kind=kind, **needs, **fields),
    ]


@pytest.mark.parametrize(
    ("kind", "fields", "field"),
    [
        ("llm", {"tool": "echo"}, "tool"),
        ("synthesis", {"tool": "scan_repository"}, "tool"),
        ("llm", {"source": "Plan"}, "source"),
        ("synthesis", {"split": "lines"}, "split"),
        ("consistency_check", {"concurrency": 2}, "concurrency"),
        ("tool", {"source": "Plan"}, "source"),
        ("llm", {"generates": "implementation_prompt"}, "generates"),
        ("fan_out", {"generates": "implementation_prompt"}, "generates"),
        ("synthesis", {"reviews": ["Plan"]}, "reviews"),
        ("fan_out", {"alternatives": 2}, "alternatives"),
        ("consistency_check", {"alternatives": 3}, "alternatives"),
        ("tool", {"alternatives": 2}, "alternatives"),
        ("tool", {"persona": "Athena"}, "persona"),
        ("tool", {"provider": "local"}, "provider"),
        ("tool", {"model": "m"}, "model"),
        ("tool", {"providers": ["local"]}, "providers"),
        ("tool", {"max_tokens": 100}, "max_tokens"),
        ("tool", {"auto_continue": 1}, "auto_continue"),
    ],
)
def test_a_field_its_kind_ignores_is_refused_naming_it(
    kind: str, fields: dict[str, Any], field: str
) -> None:
    refused = _refused(_after_plan(kind, **fields))
    assert refused.field == f"steps[1].{field}"
    assert kind in str(refused)


def test_the_refusal_names_the_kind_the_field_belongs_to() -> None:
    assert "fan_out" in str(_refused(_after_plan("llm", split="json")))
    assert "tool steps" in str(_refused(_after_plan("synthesis", tool="echo")))
    assert "llm, synthesis" in str(_refused(_after_plan("fan_out", alternatives=2)))


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("llm", {"alternatives": 2, "persona": "Athena", "provider": "local", "model": "m"}),
        ("synthesis", {"alternatives": 2, "generates": "implementation_prompt"}),
        ("implementation_prompt", {"alternatives": 2, "max_tokens": 10}),
        ("fan_out", {"split": "lines", "concurrency": 2, "persona": "Nemesis", "max_tokens": 9}),
        ("consistency_check", {"reviews": ["Plan"], "providers": ["local"], "auto_continue": 1}),
        ("tool", {"params_json": '{"a": 1}', "prompt": "{{ steps.Plan.output }}", "phase": "x"}),
        ("tool", {"alternatives": 1}),  # the default, as a template sends it
    ],
)
def test_the_fields_of_each_kind_are_accepted(kind: str, fields: dict[str, Any]) -> None:
    valid.step_drafts(_after_plan(kind, **fields), PERSONAS)


@pytest.mark.parametrize("pipeline", pipelines.PIPELINES)
def test_the_built_in_pipelines_are_accepted(pipeline: str) -> None:
    specs = pipelines.pipeline_steps(
        pipeline, path="/srv/repo", goal="tidy", providers=["local"], params={"tokens": 4}
    )
    valid.step_drafts(specs, PERSONAS)


def test_the_readme_workflow_is_accepted() -> None:
    text = """
name: Plan the release
steps:
  - name: Outline
    persona: Athena
    prompt: Outline the release as markdown headings.
    provider: local
    alternatives: 2
  - name: Detail
    kind: fan_out
    source: Outline
    split: headings
    concurrency: 4
    prompt: "Detail this part: {{ item }}"
  - name: Synthesis
    kind: synthesis
    generates: implementation_prompt
    prompt: "Combine into a plan:\\n{{ steps.Detail.output }}"
    max_tokens: 16384
    auto_continue: 2
  - name: Scan
    kind: tool
    tool: echo
    prompt: "{{ steps.Synthesis.output }}"
"""
    request = parse_template(text).to_request()
    valid.step_drafts(request.steps, PERSONAS)


CONTROLS = ["a\nb", "a\tb", "a\rb", "a\x00b", "a\x1bb", "a\x7fb", "a\x85b", "a\x9fb", "a\u2028b"]


@pytest.mark.parametrize("name", CONTROLS)
def test_a_step_name_with_a_control_character_is_refused(name: str) -> None:
    refused = _refused([pb.StepSpec(name="ok", kind="llm"), pb.StepSpec(name=name, kind="llm")])
    assert refused.field == "steps[1].name"
    assert "control characters" in str(refused)


@pytest.mark.parametrize("name", CONTROLS)
def test_a_workflow_name_with_a_control_character_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        valid.workflow_name(name)
    assert refused.value.field == "name"


def test_a_name_with_blank_ends_is_taken_stripped_and_wide_characters_are_kept() -> None:
    [draft] = valid.step_drafts([pb.StepSpec(name="  Überblick ✓ \n", kind="llm")], set())
    assert draft.name == "Überblick ✓"
    assert valid.workflow_name("\tPlan the release — v2\n") == "Plan the release — v2"


def test_a_heading_never_carries_a_control_character_into_a_generated_name() -> None:
    # The splitter takes a heading's one line, which may still hold a tab or an ESC; the
    # generated consistency check reviews the steps by the names they are stored under.
    heading = "Implementation prompt 1: Set\tup \x1b[1mthe\x1b[0m\x85\tdb"
    specs = [
        pb.StepSpec(name=heading, kind="implementation_prompt", prompt="# Set\tup {{ x }}"),
        pb.StepSpec(name="Consistency check", kind="consistency_check", reviews=["Plan", heading]),
    ]
    drafts = valid.step_drafts(specs, set(), earlier=["Plan"], generated=True)
    assert drafts[0].name == "Implementation prompt 1: Set up  [1mthe [0m db"
    assert drafts[1].config["reviews"] == ["Plan", drafts[0].name]
    assert drafts[0].prompt == specs[0].prompt  # the plan's text as it is


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_files", 10**6),
        ("max_bytes", 10**12),
        ("max_file_bytes", 10**12),
        ("max_files", 0),
        ("max_bytes", "5000"),
        ("max_file_bytes", True),
    ],
)
def test_a_scan_asking_to_show_more_than_its_bounds_is_refused_naming_the_param(
    key: str, value: Any
) -> None:
    """A hand-written workflow's scan was unbounded (the pipeline route's were not): 10**6
    files of up to 10**12 bytes made an output of 150 MB and 634 MB in the engine."""
    params = {"path": "/src/shop", "group": "file", key: value}
    scan = pb.StepSpec(
        name="Scan", kind="tool", tool="scan_repository", params_json=json.dumps(params)
    )

    refused = _refused([pb.StepSpec(name="Plan", kind="llm"), scan])

    assert refused.field == f"steps[1].params.{key}"
    assert str(kinds.SCAN_MAXIMA[key]) in refused.message


def test_a_scan_within_its_bounds_is_accepted() -> None:
    params = json.dumps({"path": "/src/shop", **kinds.SCAN_MAXIMA})
    valid.step_drafts(
        [pb.StepSpec(name="Scan", kind="tool", tool="scan_repository", params_json=params)],
        PERSONAS,
    )

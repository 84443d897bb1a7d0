"""Workflow templates: the YAML/JSON file format, validated with the offending field named.

    name: Plan the release
    consistency_check: true        # after generated steps, append a consistency check
    on_orphan: resume              # engine died: back to pending for a live one (or: fail)
    steps:
      - name: Outline
        kind: llm                  # llm | fan_out | synthesis | consistency_check | tool
        persona: Athena
        prompt: Outline the release in markdown headings.
        provider: local            # model optional
        alternatives: 2
      - name: Detail
        kind: fan_out
        source: Outline            # split this step's output …
        split: headings            # … by headings | lines | json
        concurrency: 4
        prompt: "Detail: {{ item }}"

The same model is the body of `POST /v1/workflows`, so the API and files agree.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2

INT32_MAX = 2**31 - 1  # the proto's int32: more cannot be sent on
Kind = Literal["llm", "fan_out", "synthesis", "consistency_check", "implementation_prompt", "tool"]


class StepTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: Kind = "llm"
    prompt: str = ""
    persona: str = ""
    provider: str = ""
    model: str = ""
    providers: list[str] = Field(default_factory=list, max_length=8)
    params: dict[str, Any] = Field(default_factory=dict)
    max_tokens: int = Field(default=0, ge=0, le=INT32_MAX)
    alternatives: int = Field(default=1, ge=1, le=8)
    auto_continue: int = Field(default=0, ge=0, le=8)
    source: str = ""
    split: Literal["headings", "lines", "json", ""] = ""
    concurrency: int = Field(default=0, ge=0, le=64)
    generates: Literal["implementation_prompt", ""] = ""
    reviews: list[str] = Field(default_factory=list)
    tool: str = ""

    def to_pb(self) -> pb.StepSpec:
        fields = self.model_dump(exclude={"params"})
        return pb.StepSpec(**fields, params_json=json.dumps(self.params))


class WorkflowTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    consistency_check: bool = False
    # A run whose engine died: failed (the default), or back to pending for a live engine.
    on_orphan: Literal["fail", "resume"] = "fail"
    default_providers: list[str] = Field(default_factory=list, max_length=8)
    project_id: str = Field(default="", max_length=36)
    steps: list[StepTemplate] = Field(min_length=1, max_length=500)

    def to_request(self) -> runs_pb2.CreateWorkflowRequest:
        return runs_pb2.CreateWorkflowRequest(
            name=self.name,
            consistency_check=self.consistency_check,
            on_orphan=self.on_orphan,
            default_providers=self.default_providers,
            project_id=self.project_id,
            steps=[s.to_pb() for s in self.steps],
        )


def field_path(location: tuple[int | str, ...]) -> str:
    """('steps', 2, 'kind') → 'steps[2].kind'."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def invalid(error: ValidationError) -> InvalidArgument:
    first = error.errors()[0]
    return InvalidArgument(first["msg"], field=field_path(tuple(first["loc"])) or "template")


def parse_template(text: str) -> WorkflowTemplate:
    """YAML or JSON (JSON is YAML) text → a validated template, or InvalidArgument."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidArgument(f"not valid YAML or JSON{where}", field="template") from None
    if not isinstance(data, dict):
        raise InvalidArgument("must be a mapping with name and steps", field="template")
    try:
        return WorkflowTemplate.model_validate(data)
    except ValidationError as error:
        raise invalid(error) from None

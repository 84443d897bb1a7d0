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
import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
)

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2

INT32_MAX = 2**31 - 1  # the proto's int32: more cannot be sent on


def _encodable(text: str) -> str:
    """JSON's "\\ud800" is a valid Python str that no UTF-8 (protobuf, the database) can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"not valid Unicode: a lone surrogate at {error.start}") from None
    return text


# Text a request carries on: refused at validation, naming the field, not a 500 building it.
Text = Annotated[str, AfterValidator(_encodable)]

Kind = Literal["llm", "fan_out", "synthesis", "consistency_check", "implementation_prompt", "tool"]


class StepTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: Kind = "llm"
    prompt: Text = ""
    persona: Text = ""
    provider: Text = ""
    model: Text = ""
    providers: list[Text] = Field(default_factory=list, max_length=8)
    params: dict[str, Any] = Field(default_factory=dict)
    max_tokens: StrictInt = Field(default=0, ge=0, le=INT32_MAX)
    alternatives: StrictInt = Field(default=1, ge=1, le=8)
    auto_continue: StrictInt = Field(default=0, ge=0, le=8)
    source: Text = ""
    split: Literal["headings", "lines", "json", ""] = ""
    concurrency: StrictInt = Field(default=0, ge=0, le=64)
    generates: Literal["implementation_prompt", ""] = ""
    reviews: list[Text] = Field(default_factory=list)
    tool: Text = ""

    def to_pb(self) -> pb.StepSpec:
        fields = self.model_dump(exclude={"params"})
        return pb.StepSpec(**fields, params_json=json.dumps(self.params))


class WorkflowTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    consistency_check: StrictBool = False
    # A run whose engine died: failed (the default), or back to pending for a live engine.
    on_orphan: Literal["fail", "resume"] = "fail"
    default_providers: list[Text] = Field(default_factory=list, max_length=8)
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


MAX_DEPTH = 32  # nesting of mappings and lists; a template needs a handful
TIMESTAMP = "tag:yaml.org,2002:timestamp"


class TemplateLoader(yaml.SafeLoader):
    """YAML that reads as JSON values. No aliases: a few lines of anchors expand to gigabytes
    once written out. Bounded nesting: the composer recurses, and a 1 KB file of `[[[[` would
    exhaust the stack. Dates stay text: a step's params are sent on as JSON."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


TemplateLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _json_values(value: Any, path: str) -> None:
    """What JSON can carry, or InvalidArgument naming where (an explicit `!!binary`, say)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument("keys must be text", field=path or "template")
            _json_values(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_values(item, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument("must be a finite number", field=path or "template")
    elif not isinstance(value, str | int | float | bool | None):
        kind = type(value).__name__
        raise InvalidArgument(f"must be a JSON value, not {kind}", field=path or "template")


def parse_template(text: str) -> WorkflowTemplate:
    """YAML or JSON (JSON is YAML) text → a validated template, or InvalidArgument."""
    try:
        data = yaml.load(text, Loader=TemplateLoader)  # a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None)
        detail = f": {problem}" if problem else ""
        raise InvalidArgument(f"not valid YAML or JSON{where}{detail}", field="template") from None
    if not isinstance(data, dict):
        raise InvalidArgument("must be a mapping with name and steps", field="template")
    _json_values(data, "")
    try:
        return WorkflowTemplate.model_validate(data)
    except ValidationError as error:
        raise invalid(error) from None

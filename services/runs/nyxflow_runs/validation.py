"""Validation of what clients send, with the offending field named."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nyxflow.constants import DEFAULT_PROVIDER, STEP_KINDS, default_max_tokens
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb

MAX_NAME = 200
MAX_STEPS = 500


@dataclass(frozen=True)
class StepDraft:
    name: str
    kind: str
    prompt: str
    provider: str
    model: str
    params: dict[str, Any]
    max_tokens: int


def require_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument("is required", field=field)
    return value


def workflow_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidArgument("is required", field="name")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"must be at most {MAX_NAME} characters", field="name")
    return name


def step_drafts(specs: Sequence[pb.StepSpec]) -> list[StepDraft]:
    if not specs:
        raise InvalidArgument("a workflow needs at least one step", field="steps")
    if len(specs) > MAX_STEPS:
        raise InvalidArgument(f"at most {MAX_STEPS} steps", field="steps")
    drafts: list[StepDraft] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        at = f"steps[{i}]"
        name = spec.name.strip()
        if not name:
            raise InvalidArgument("is required", field=f"{at}.name")
        if len(name) > MAX_NAME:
            raise InvalidArgument(f"must be at most {MAX_NAME} characters", field=f"{at}.name")
        if name in seen:
            raise InvalidArgument(f"duplicate step name {name!r}", field=f"{at}.name")
        seen.add(name)
        if spec.kind not in STEP_KINDS:
            allowed = ", ".join(sorted(STEP_KINDS))
            raise InvalidArgument(
                f"unknown kind {spec.kind!r} (one of {allowed})", field=f"{at}.kind"
            )
        if spec.max_tokens < 0:
            raise InvalidArgument("must not be negative", field=f"{at}.max_tokens")
        drafts.append(
            StepDraft(
                name=name,
                kind=spec.kind,
                prompt=spec.prompt,
                provider=spec.provider or DEFAULT_PROVIDER,
                model=spec.model,
                params=_params(spec.params_json, f"{at}.params"),
                max_tokens=spec.max_tokens or default_max_tokens(spec.kind),
            )
        )
    return drafts


def _params(raw: str, field: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"is not valid JSON: {error.msg}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidArgument("must be a JSON object", field=field)
    return value


def event_data(raw: str, field: str) -> dict[str, Any]:
    return _params(raw, field)


def positive(value: float, field: str) -> float:
    if value <= 0:
        raise InvalidArgument("must be positive", field=field)
    return value

"""Workflow specs used across tests."""

from __future__ import annotations

import json
from typing import Any

from nyxflow.v1 import common_pb2 as pb


def llm_step(name: str, prompt: str = "say something", **params: Any) -> pb.StepSpec:
    return pb.StepSpec(name=name, kind="llm", prompt=prompt, params_json=json.dumps(params))


def chain(count: int, **params: Any) -> list[pb.StepSpec]:
    """`count` llm steps, each prompted with the previous output."""
    steps = [llm_step("s0", "begin", **params)]
    steps += [
        llm_step(f"s{i}", f"continue {{{{ steps.s{i - 1}.output }}}}", **params)
        for i in range(1, count)
    ]
    return steps

"""Prompt templates: `{{ steps.<name>.output }}`, inside a fan-out `{{ item }}`, and `{{ "{{" }}`
for a literal `{{` (nyxflow/references.py).

Runs validates every reference when the workflow is created, so rendering never meets an
unknown one. An auto-generated step's prompt is not a template: it is sent as it is. An
output that stopped at its token limit goes in marked so (cut_off.py): it often reads whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from nyxflow.references import OPEN, REFERENCE
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.cut_off import passed_on


def render(template: str, outputs: Mapping[str, str], item: str | None = None) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["item"]:
            return item or ""
        if match["open"]:
            return OPEN
        return passed_on(outputs, match["step"].strip())  # a cut one marked

    return REFERENCE.sub(substitute, template)


def prompt_of(step: pb.Step, outputs: Mapping[str, str]) -> str:
    """What a step sends: its prompt rendered, but an auto-generated step's as it is. That one
    quotes a plan, whose `{{ … }}` (Vue, Jinja, Helm) is text for the model, not a reference."""
    return step.prompt if step.auto_generated else render(step.prompt, outputs)

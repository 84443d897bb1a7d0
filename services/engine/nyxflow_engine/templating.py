"""Prompt templates: `{{ steps.<name>.output }}` and, inside a fan-out, `{{ item }}`.

Runs validates every reference when the workflow is created, so rendering never meets an
unknown one. An auto-generated step's prompt is not a template: it is sent as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from nyxflow.v1 import common_pb2 as pb

REFERENCE = re.compile(r"\{\{\s*(?:steps\.([A-Za-z0-9_\- ]+?)\.output|(item))\s*\}\}")


def render(template: str, outputs: Mapping[str, str], item: str | None = None) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group(2):
            return item or ""
        return outputs.get(match.group(1).strip(), "")

    return REFERENCE.sub(substitute, template)


def prompt_of(step: pb.Step, outputs: Mapping[str, str]) -> str:
    """What a step sends: its prompt rendered, but an auto-generated step's as it is. That one
    quotes a plan, whose `{{ … }}` (Vue, Jinja, Helm) is text for the model, not a reference."""
    return step.prompt if step.auto_generated else render(step.prompt, outputs)

"""Prompt templates: `{{ steps.<name>.output }}` is replaced by that step's output."""

from __future__ import annotations

import re
from collections.abc import Mapping

REFERENCE = re.compile(r"\{\{\s*steps\.([A-Za-z0-9_\- ]+?)\.output\s*\}\}")


def render(template: str, outputs: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        return outputs.get(match.group(1).strip(), "")

    return REFERENCE.sub(substitute, template)

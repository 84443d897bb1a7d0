"""Prompt templates: `{{ steps.<name>.output }}` and, inside a fan-out, `{{ item }}`.

Runs validates every reference when the workflow is created, so rendering never meets an
unknown one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REFERENCE = re.compile(r"\{\{\s*(?:steps\.([A-Za-z0-9_\- ]+?)\.output|(item))\s*\}\}")


def render(template: str, outputs: Mapping[str, str], item: str | None = None) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group(2):
            return item or ""
        return outputs.get(match.group(1).strip(), "")

    return REFERENCE.sub(substitute, template)


def literal(text: str) -> str:
    """Text to embed in a generated prompt without it reading as a reference."""
    return text.replace("{{", "{ {").replace("}}", "} }")

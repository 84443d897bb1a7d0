"""Splitting an output into items: markdown headings, lines, or a JSON array."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from nyxflow.errors import InvalidArgument

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
MAX_HEADING = 120


@dataclass(frozen=True)
class Item:
    heading: str
    text: str  # the whole item, heading included


def split_items(text: str, mode: str) -> list[Item]:
    if mode == "lines":
        return [
            Item(_short(line.strip()), line.strip()) for line in text.splitlines() if line.strip()
        ]
    if mode == "json":
        return _json_items(text)
    return _heading_items(text)


def _heading_items(text: str) -> list[Item]:
    lines = text.splitlines()
    levels = [len(m.group(1)) for line in lines if (m := HEADING.match(line))]
    if not levels:
        raise InvalidArgument("the source output has no markdown headings to split", field="split")
    level = min(levels)  # split on the top-most heading level present
    items: list[Item] = []
    heading, body = None, list[str]()
    for line in lines:
        match = HEADING.match(line)
        if match and len(match.group(1)) == level:
            if heading is not None:
                items.append(Item(_short(heading), "\n".join(body).strip()))
            heading, body = match.group(2), [line]
        elif heading is not None:
            body.append(line)
    if heading is not None:
        items.append(Item(_short(heading), "\n".join(body).strip()))
    return items


def _json_items(text: str) -> list[Item]:
    candidate = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", candidate, re.DOTALL)
    if fenced:
        candidate = fenced.group(1)
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            f"the source output is not JSON: {error.msg}", field="split"
        ) from None
    if isinstance(value, dict) and isinstance(value.get("items"), list):
        value = value["items"]  # a report that carries its items, e.g. a repository scan
    if not isinstance(value, list):
        raise InvalidArgument("the source output is not a JSON array", field="split")
    items = []
    for entry in value:
        text_value = entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False)
        heading = entry.get("title") or entry.get("name") if isinstance(entry, dict) else None
        items.append(Item(_short(str(heading or text_value)), text_value))
    return items


def _short(text: str) -> str:
    return text if len(text) <= MAX_HEADING else text[: MAX_HEADING - 1] + "…"

"""Splitting an output into items: markdown headings, lines, or a JSON array."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow.references import one_line

# Up to three spaces may come first; four make a code block. The closing run of #s is taken
# off by `_heading_text`: in the pattern, a lazy text before it read a long run of blanks
# once per character (a 60 KB heading line held the engine past its lease).
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+)$")
# A line of = or - under a line of text makes that text a heading of level 1 or 2 (setext).
UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# A line the underline cannot make a heading: a blank, a list item (its "---" is a break),
# a quote, or code.
NOT_SETEXT_TEXT = re.compile(r"^(?:[ \t]*$| {0,3}(?:[-*+>]|\d{1,9}[.)])(?:[ \t]|$)| {4}|\t)")
# Any indentation: a plan's code blocks often sit in list items.
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")
MAX_HEADING = 120
# Markdown's line ends. str.splitlines also breaks at a form feed, NEL, U+2028 and more: a
# line of code holding one became two items, and an item's text reached its prompt rewritten.
LINE_END = re.compile(r"\r\n|\r|\n")
# What an item's text is trimmed of: blank lines and indentation around it, nothing else.
BLANK = " \t\r\n"
# Fences stand on lines of their own: inside JSON text a ``` is always within a string.
FENCED_JSON = re.compile(
    r"^```(?:json)?[ \t]*\r?\n(.*?)^```[ \t]*\r?$", re.DOTALL | re.MULTILINE | re.IGNORECASE
)


@dataclass(frozen=True)
class Item:
    heading: str
    text: str  # the whole item, heading included


def split_items(text: str, mode: str) -> list[Item]:
    if mode == "lines":
        lines = (line.strip(BLANK) for line in LINE_END.split(text))
        return [Item(_short(line), line) for line in lines if line.strip()]
    if mode == "json":
        return _json_items(text)
    return _heading_items(text)


def _heading_items(text: str) -> list[Item]:
    starts = [0] + [end.end() for end in LINE_END.finditer(text)]
    lines = LINE_END.split(text)
    headings = _headings(lines)
    if not headings:
        raise InvalidArgument("the source output has no markdown headings to split", field="split")
    level = min(lvl for lvl, _ in headings.values())  # the top-most level present
    tops = sorted(i for i, (lvl, _) in headings.items() if lvl == level)
    # Each item is the text itself from its heading to the next, as the model wrote it.
    ends = [starts[i] for i in tops[1:]] + [len(text)]
    return [
        Item(_short(headings[i][1]), text[starts[i] : end].strip(BLANK))
        for i, end in zip(tops, ends, strict=True)
    ]


def _headings(lines: list[str]) -> dict[int, tuple[int, str]]:
    """Each heading's line (a setext heading's text line) with its level and text. A
    "# install deps" in a shell block is a comment, not a part of the plan."""
    found: dict[int, tuple[int, str]] = {}
    previous: tuple[int, str] | None = None  # the last line outside fences, if a text line
    for i, line in _outside_fences(lines):
        if match := HEADING.match(line):
            found[i] = (len(match.group(1)), _heading_text(match.group(2)))
            previous = None
            continue
        under = UNDERLINE.match(line)
        if under and previous is not None and previous[0] == i - 1:
            found[i - 1] = (1 if under.group(1)[0] == "=" else 2, previous[1].strip())
            previous = None
            continue
        previous = None if NOT_SETEXT_TEXT.match(line) else (i, line)
    return found


def _heading_text(text: str) -> str:
    """An ATX heading's text without its closing run of #s, which counts only after a blank
    (CommonMark): "## C#" is about C#, and "## ###" is about "###"."""
    text = text.rstrip(" \t")
    bare = text.rstrip("#")
    if bare != text and bare.endswith((" ", "\t")):
        return bare.rstrip(" \t")
    return text


def _outside_fences(lines: list[str]) -> list[tuple[int, str]]:
    """The lines not in a fenced code block, with their index. A fence closes with a line of
    the same character at least as long as its opening; one never closed runs to the end."""
    outside: list[tuple[int, str]] = []
    fence = ""
    for i, line in enumerate(lines):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1).startswith(fence) and not match.group(2).strip():
                fence = ""
        elif match and not (match.group(1)[0] == "`" and "`" in match.group(2)):
            fence = match.group(1)  # a backtick fence's info string holds no backtick
        else:
            outside.append((i, line))
    return outside


def _json_items(text: str) -> list[Item]:
    value = _json_value(text.strip())
    if isinstance(value, dict) and isinstance(value.get("items"), list):
        value = value["items"]  # a report that carries its items, e.g. a repository scan
    if not isinstance(value, list):
        raise InvalidArgument("the source output is not a JSON array", field="split")
    items = []
    for entry in value:
        if isinstance(entry, str) and not entry.strip():
            continue  # nothing to run, as a blank line in lines mode
        text_value = entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False)
        heading = entry.get("title") or entry.get("name") if isinstance(entry, dict) else None
        items.append(Item(_short(str(heading or text_value)), text_value))
    return items


def _json_value(text: str) -> Any:
    """The whole text as JSON, else the first fenced block's body (a model's answer). The
    whole comes first: a scan's JSON holds files, and a file's code block is content."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        failure, fenced = error, FENCED_JSON.search(text)
    if fenced is not None:
        try:
            return json.loads(fenced.group(1))
        except json.JSONDecodeError as error:
            failure = error
    raise InvalidArgument(f"the source output is not JSON: {failure.msg}", field="split")


def _short(text: str) -> str:
    """A heading as it is shown (the run's progress, the page, `run follow`): one line, each
    run of control characters one space, as a generated step's name. An ESC from the model's
    answer sent a terminal an escape sequence."""
    text = one_line(text)
    return text if len(text) <= MAX_HEADING else text[: MAX_HEADING - 1] + "…"

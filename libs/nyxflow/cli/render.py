"""Printing workflows and runs for people (rich) or scripts (--json).

What the CLI prints holds data it does not control: step names, headings and errors written
by models and users ("Configure [/etc/nginx]", "[red]x[/red]", ":x:"). Rich would take them
for markup (a MarkupError mid-run, or text that vanishes) or emoji codes, so no console of the
CLI reads markup or emoji at all: a str is printed as it is, and the CLI's own styles are
given as `line(...)` parts.

Nor does a terminal get a control character from that data: an ESC in a model's answer began
an escape sequence that set the clipboard (OSC 52), cleared the screen to fake a result, or hid
a link (OSC 8). Every str the CLI prints goes through `clean`: in `line` and `status`, in
the tables' cells, and in `print` of the CLI's consoles."""

from __future__ import annotations

import json
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

# A part of a line: text printed as it is, or (text, style).
Part = str | Text | tuple[str, str]

# What a terminal acts on rather than shows: C0 controls (ESC above all), DEL and C1 (0x9b is a
# CSI on its own). Each becomes U+FFFD, so the text keeps its length and shows where one was.
# A newline and a tab are text (a multi-line answer streamed with --tokens); a CR is dropped,
# as rich drops it, so a CRLF is one newline.
_SHOWN: dict[int, str | None] = {
    code: "\ufffd" for code in (*range(0x20), *range(0x7F, 0xA0)) if chr(code) not in "\n\t"
}
_SHOWN[ord("\r")] = None


def clean(text: str) -> str:
    """`text` with no control character a terminal would act on (see _SHOWN)."""
    return text.translate(_SHOWN)


def _clean_part(part: Part) -> Part:
    if isinstance(part, str):
        return clean(part)
    if isinstance(part, tuple):
        return clean(part[0]), part[1]
    safe = part.copy()
    safe.plain = clean(part.plain)
    return safe


class _Console(Console):
    """A console that cleans each str or Text it prints (tables are cleaned cell by cell)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        shown = (_clean_part(o) if isinstance(o, str | Text) else o for o in objects)
        super().print(*shown, **kwargs)


def console(*, stderr: bool = False) -> Console:
    # stderr holds one line per error: wrapped at the terminal's (or a pipe's 80) columns,
    # a script reading its first line got half the reason.
    return _Console(stderr=stderr, markup=False, emoji=False, soft_wrap=stderr)


out = console()

STATUS_STYLE = {
    "pending": "grey50",
    "running": "blue",
    "completed": "green",
    "failed": "red",
    "paused": "yellow",
    "skipped": "yellow",
    "cancelled": "yellow",
    "idle": "grey50",
}


def line(*parts: Part) -> Text:
    """One line from plain text and (text, style) parts; nothing in it is read as markup,
    and no control character in it reaches the terminal."""
    return Text.assemble(*(_clean_part(part) for part in parts))


def status(text: str) -> Text:
    return Text(clean(text), style=STATUS_STYLE.get(text, "white"))


def raw(text: str) -> None:
    """Text for another program (a patch for `git apply`): as it is into a pipe or a file, and
    cleaned like the rest on a terminal."""
    sys.stdout.write(clean(text) if out.is_terminal else text)


def as_json(message: Message | list[Message]) -> None:
    def one(m: Message) -> dict[str, Any]:
        return MessageToDict(m, preserving_proto_field_name=True)

    value = [one(m) for m in message] if isinstance(message, list) else one(message)
    print(json.dumps(value, indent=2))


ID_WIDTH = 36  # a UUID's
# Columns of a word or a number, printed whole on one line: folded to nothing beside two
# whole ids, `run list | grep failed` found no run.
SHORT_WIDTHS = {"status": 9, "events": 6, "steps": 5}
# Beside whole ids, what a folded column (a name, an error) keeps at the least.
FOLDED_WIDTH = 12


def make_table(*headings: str, ids: tuple[str, ...] = ("id",)) -> Table:
    """A table whose id columns are printed whole, on one line, however narrow the terminal
    (the README's commands take them as copied from here), whose short columns are whole
    too, and whose other cells are folded rather than cut with an ellipsis."""
    grid = Table()
    for heading in headings:
        whole = heading in ids
        short = SHORT_WIDTHS.get(heading)
        grid.add_column(
            heading,
            no_wrap=whole or short is not None,
            min_width=ID_WIDTH if whole else short,
            overflow="fold",
        )
    return grid


def id_table(first: str, second: str, *others: str) -> tuple[Table, bool]:
    """A table led by two whole id columns, and whether the second is stacked under the first
    (in its cell): side by side they would leave the `others` too little room here."""
    room = sum(SHORT_WIDTHS.get(heading, FOLDED_WIDTH) for heading in others)
    columns = 2 + len(others)  # each with a border and a space either side
    if out.width < 2 * ID_WIDTH + room + 3 * columns + 1:
        heading = f"{first} / {second}"
        return make_table(heading, *others, ids=(heading,)), True
    return make_table(first, second, *others, ids=(first, second)), False


def id_cells(first: str, second: str, stacked: bool) -> tuple[str, ...]:
    return (f"{first}\n{second}",) if stacked else (first, second)


def add_row(table: Table, *cells: Part) -> None:
    """A row of plain text (a str cell is not read as markup, whatever the console)."""
    table.add_row(*(line(cell) for cell in cells))


def workflows_table(workflows: list[Any]) -> None:
    table, stacked = id_table("id", "last run", "name", "steps", "status")
    for w in workflows:
        ids = id_cells(w.id, w.last_run_id or "-", stacked)
        add_row(table, *ids, w.name, str(len(w.steps)), status(w.status))
    out.print(table)


def steps_table(steps: list[Any]) -> None:
    table = make_table("#", "name", "kind", "status", "served by", "tokens", "notes")
    for s in steps:
        notes: list[Part] = []
        if s.truncated:
            notes.append(("truncated", "yellow"))
        if s.auto_generated:
            notes.append("generated")
        if s.items or s.items_left_out:  # the items a whole read listed, and those it did not
            notes.append(f"{len(s.items) + s.items_left_out} items")
        if s.error:
            notes.append((s.error, "red"))
        add_row(
            table,
            str(s.order),
            s.name,
            s.kind,
            status(s.status),
            s.served_by or "-",
            str(s.output_tokens or "-"),
            Text(" ").join(line(note) for note in notes),
        )
    out.print(table)


def runs_table(runs: list[Any]) -> None:
    table, stacked = id_table("id", "workflow", "status", "events", "error")
    for r in runs:
        ids = id_cells(r.id, r.workflow_id, stacked)
        add_row(table, *ids, status(r.status), str(r.last_seq), r.error or "")
    out.print(table)

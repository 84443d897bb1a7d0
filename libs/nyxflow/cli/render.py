"""Printing workflows and runs for people (rich) or scripts (--json).

What the CLI prints holds data it does not control: step names, headings and errors written
by models and users ("Configure [/etc/nginx]", "[red]x[/red]", ":x:"). Rich would take them
for markup (a MarkupError mid-run, or text that vanishes) or emoji codes, so no console of the
CLI reads markup or emoji at all: a str is printed as it is, and the CLI's own styles are
given as `line(...)` parts."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

# A part of a line: text printed as it is, or (text, style).
Part = str | Text | tuple[str, str]


def console(*, stderr: bool = False) -> Console:
    # stderr holds one line per error: wrapped at the terminal's (or a pipe's 80) columns,
    # a script reading its first line got half the reason.
    return Console(stderr=stderr, markup=False, emoji=False, soft_wrap=stderr)


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
    """One line from plain text and (text, style) parts; nothing in it is read as markup."""
    return Text.assemble(*parts)


def status(text: str) -> Text:
    return Text(text, style=STATUS_STYLE.get(text, "white"))


def as_json(message: Message | list[Message]) -> None:
    def one(m: Message) -> dict[str, Any]:
        return MessageToDict(m, preserving_proto_field_name=True)

    value = [one(m) for m in message] if isinstance(message, list) else one(message)
    print(json.dumps(value, indent=2))


ID_WIDTH = 36  # a UUID's


def make_table(*headings: str, ids: tuple[str, ...] = ("id",)) -> Table:
    """A table whose id columns are printed whole, on one line, however narrow the terminal
    (the README's commands take them as copied from here), and whose other cells are folded
    rather than cut with an ellipsis."""
    grid = Table()
    for heading in headings:
        whole = heading in ids
        grid.add_column(
            heading, no_wrap=whole, min_width=ID_WIDTH if whole else None, overflow="fold"
        )
    return grid


def add_row(table: Table, *cells: Part) -> None:
    """A row of plain text (a str cell is not read as markup, whatever the console)."""
    table.add_row(*(line(cell) for cell in cells))


def workflows_table(workflows: list[Any]) -> None:
    table = make_table("id", "name", "steps", "status", "last run", ids=("id", "last run"))
    for w in workflows:
        add_row(table, w.id, w.name, str(len(w.steps)), status(w.status), w.last_run_id or "-")
    out.print(table)


def steps_table(steps: list[Any]) -> None:
    table = make_table("#", "name", "kind", "status", "served by", "tokens", "notes")
    for s in steps:
        notes: list[Part] = []
        if s.truncated:
            notes.append(("truncated", "yellow"))
        if s.auto_generated:
            notes.append("generated")
        if s.items:
            notes.append(f"{len(s.items)} items")
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
    table = make_table("id", "workflow", "status", "events", "error", ids=("id", "workflow"))
    for r in runs:
        add_row(table, r.id, r.workflow_id, status(r.status), str(r.last_seq), r.error or "")
    out.print(table)

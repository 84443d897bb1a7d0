"""Printing workflows and runs for people (rich) or scripts (--json)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

out = Console()

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


def status(text: str) -> str:
    return f"[{STATUS_STYLE.get(text, 'white')}]{text}[/]"


def as_json(message: Message | list[Message]) -> None:
    def one(m: Message) -> dict[str, Any]:
        return MessageToDict(m, preserving_proto_field_name=True)

    value = [one(m) for m in message] if isinstance(message, list) else one(message)
    print(json.dumps(value, indent=2))


def workflows_table(workflows: list[Any]) -> None:
    table = Table("id", "name", "steps", "status", "last run")
    for w in workflows:
        table.add_row(w.id, w.name, str(len(w.steps)), status(w.status), w.last_run_id or "-")
    out.print(table)


def steps_table(steps: list[Any]) -> None:
    table = Table("#", "name", "kind", "status", "served by", "tokens", "notes")
    for s in steps:
        notes = []
        if s.truncated:
            notes.append("[yellow]truncated[/]")
        if s.auto_generated:
            notes.append("generated")
        if s.items:
            notes.append(f"{len(s.items)} items")
        if s.error:
            notes.append(f"[red]{s.error}[/]")
        table.add_row(
            str(s.order),
            s.name,
            s.kind,
            status(s.status),
            s.served_by or "-",
            str(s.output_tokens or "-"),
            " ".join(notes),
        )
    out.print(table)


def runs_table(runs: list[Any]) -> None:
    table = Table("id", "workflow", "status", "events", "error")
    for r in runs:
        table.add_row(r.id, r.workflow_id, status(r.status), str(r.last_seq), r.error or "")
    out.print(table)

"""What the CLI prints holds model and user text: brackets and colons in it are printed as they
are, never read as rich markup (a MarkupError mid-run, or text that vanishes) or emoji codes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator

import pytest
import typer
from rich.console import Console

from nyxflow import events as ev
from nyxflow.cli import follow, render
from nyxflow.cli.connection import run_async
from nyxflow.v1 import common_pb2 as pb

ODD = ["Configure [/etc/nginx] for TLS", "[red]secret[/red] part", "[bold]", "fix :x: now", "a\\"]


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    # the CLI's own consoles, only wide enough that a table keeps each cell on one line
    monkeypatch.setenv("COLUMNS", "300")


def _event(seq: int, etype: str, **data: object) -> pb.RunEvent:
    return pb.RunEvent(seq=seq, type=etype, data_json=json.dumps(data))


async def _stream(events: list[pb.RunEvent]) -> AsyncGenerator[pb.RunEvent, None]:
    for event in events:
        yield event


@pytest.mark.parametrize("text", ODD)
async def test_follow_prints_model_text_as_it_is(
    capsys: pytest.CaptureFixture[str], text: str
) -> None:
    events = [
        _event(1, ev.RUN_STARTED),
        _event(2, ev.STEP_STARTED, step_id="s", name=f"Implementation prompt 1: {text}", kind="x"),
        _event(3, ev.PROVIDER_FALLBACK, **{"from": "anthropic", "to": "google", "reason": text}),
        _event(4, ev.FAN_OUT_PROGRESS, step_id="f", index=0, done=1, total=2, heading=text),
        _event(5, ev.STEP_COMPLETED, step_id="s", name=text, output_tokens=3, served_by="local"),
        _event(6, ev.STEP_FAILED, step_id="s", name=text, error=text),
        _event(7, ev.RUN_REQUEUED, reason=text),
        _event(8, ev.RUN_FAILED, status=ev.FAILED, error=text),
    ]
    printer = follow.Printer(tokens=False, as_json=False)
    await printer.relay(_stream(events))
    out = capsys.readouterr().out
    assert printer.final == ev.FAILED
    assert out.count(text) == 8, out


@pytest.mark.parametrize("text", ODD)
def test_tables_print_names_and_errors_as_they_are(
    capsys: pytest.CaptureFixture[str], text: str
) -> None:
    step = pb.Step(name=text, kind="tool", status="failed", error=text, truncated=True)
    render.steps_table([step])
    render.runs_table([pb.Run(id="r", workflow_id="w", status="failed", error=text)])
    render.workflows_table([pb.Workflow(id="w", name=text, status="failed")])
    out = capsys.readouterr().out
    assert out.count(text) == 4, out
    assert "truncated" in out


def test_a_rendering_error_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    @run_async
    async def command() -> None:
        Console().print("[/oops]")  # a console that still reads markup

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert "[/oops]" in stderr


def test_ids_are_printed_whole_on_a_narrow_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's commands take ids as copied from these tables: at 80 columns they were
    cut to `5be4125d-0655-49…`."""
    monkeypatch.setenv("COLUMNS", "80")
    ids = [str(uuid.uuid4()) for _ in range(4)]
    name = "A workflow whose name is far too long to fit in the column it is given here"
    render.workflows_table([pb.Workflow(id=ids[0], name=name, status="failed", last_run_id=ids[1])])
    render.runs_table([pb.Run(id=ids[2], workflow_id=ids[3], status="failed", error=name)])
    out = capsys.readouterr().out
    for one in ids:
        assert one in out, out
    assert "…" not in out  # the rest is folded onto more lines, not cut


@pytest.mark.parametrize("columns", ["80", "100", "300"])
def test_every_column_of_the_run_and_workflow_lists_is_readable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    """At 80 columns (any pipe) the two whole ids left status, events and error no width at
    all: `nyxflow run list | grep failed` found nothing. A run's id and status share a line."""
    monkeypatch.setenv("COLUMNS", columns)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    render.runs_table(
        [
            pb.Run(
                id=ids[0], workflow_id=ids[1], status="cancelled", error="orphaned", last_seq=12345
            )
        ]
    )
    render.workflows_table(
        [pb.Workflow(id=ids[2], name="Demo", status="completed", last_run_id=ids[3])]
    )
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= int(columns) for line in lines), "\n".join(lines)
    found = [line for line in lines if "cancelled" in line]
    assert len(found) == 1 and ids[0] in found[0] and "12345" in found[0], "\n".join(lines)
    assert "orphaned" in found[0]
    found = [line for line in lines if "completed" in line]
    assert len(found) == 1 and ids[2] in found[0] and "Demo" in found[0], "\n".join(lines)
    for heading in ("status", "events", "error", "name", "steps", "workflow", "last run"):
        assert heading in "\n".join(lines)
    for one in ids:
        assert one in "\n".join(lines)

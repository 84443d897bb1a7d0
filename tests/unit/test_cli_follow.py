"""Following a run on when the stream it is followed on ends or breaks before the run does,
and the exit codes of `run follow` / `run start --follow`."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import typer

from nyxflow import events as ev
from nyxflow.cli import follow, main
from nyxflow.errors import NyxflowError, Unauthenticated, Unavailable
from nyxflow.v1 import common_pb2 as pb


def _event(seq: int, etype: str, **data: object) -> pb.RunEvent:
    return pb.RunEvent(seq=seq, type=etype, data_json=json.dumps(data))


async def _stream(
    events: list[pb.RunEvent], error: NyxflowError | None = None
) -> AsyncGenerator[pb.RunEvent, None]:
    for event in events:
        yield event
    if error is not None:
        raise error


@dataclass
class FakeRuns:
    """WatchRun answers, one per call: (events it gives, error it ends with)."""

    watches: list[tuple[list[pb.RunEvent], NyxflowError | None]]
    asked: list[int] = field(default_factory=list)

    def watch_run(self, run_id: str, after_seq: int = 0) -> AsyncGenerator[pb.RunEvent, None]:
        self.asked.append(after_seq)
        events, error = self.watches.pop(0) if self.watches else ([], Unavailable("down"))
        return _stream([e for e in events if e.seq > after_seq], error)

    async def get_run(self, run_id: str, *, brief: bool = False) -> pb.Run:
        return pb.Run(id=run_id, status=ev.RUNNING)


def clients(execute: list[pb.RunEvent], runs: FakeRuns, error: NyxflowError | None = None) -> Any:
    engine = SimpleNamespace(execute=lambda run_id: _stream(execute, error))
    return SimpleNamespace(engine=engine, runs=runs, execute_silence_s=15.0)


STARTED = [_event(1, ev.RUN_STARTED), _event(2, ev.STEP_STARTED, name="a", kind="llm")]
STORED = [*STARTED, _event(3, ev.RUN_REQUEUED, reason="drain"), _event(4, ev.RUN_STARTED)]


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "WATCH_RETRY_S", 0.5)


@pytest.mark.parametrize("broke", [None, Unavailable("engine gone")], ids=["ended", "broke"])
async def test_execute_ending_early_goes_on_through_watch_run_from_the_last_seq(
    capsys: pytest.CaptureFixture[str], broke: NyxflowError | None
) -> None:
    # WatchRun drops the first time (runs restarting), then has the rest
    runs = FakeRuns(
        [([], Unavailable("runs restarting")), ([*STORED, _event(5, ev.RUN_COMPLETED)], None)]
    )
    final = await follow.follow_run(
        clients(STARTED, runs, broke), "r", start=True, tokens=False, as_json=True
    )
    assert final == ev.COMPLETED
    assert runs.asked == [2, 2]
    seqs = [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()]
    assert seqs == [1, 2, 3, 4, 5]


async def test_runs_out_of_reach_detaches() -> None:
    with pytest.raises(follow.Detached, match="down"):
        await follow.follow_run(
            clients(STARTED, FakeRuns([])), "r", start=True, tokens=False, as_json=True
        )


async def test_a_key_refused_while_watching_detaches_at_once() -> None:
    runs = FakeRuns([(STORED, Unauthenticated("key revoked"))])
    with pytest.raises(follow.Detached, match="key revoked"):
        await follow.follow_run(clients(STARTED, runs), "r", start=True, tokens=False, as_json=True)
    assert runs.asked == [2]


@pytest.mark.parametrize(
    ("status", "code"),
    [(ev.COMPLETED, 0), (ev.FAILED, 3), (ev.PAUSED, 4), (ev.CANCELLED, 5)],
)
async def test_exit_code_by_final_status(status: str, code: int) -> None:
    end = _event(3, ev.TERMINAL_EVENT_FOR_STATUS[status], status=status)
    c = clients([*STARTED, end], FakeRuns([]))
    if code:
        with pytest.raises(typer.Exit) as exited:
            await main._follow_to_the_end(c, "r", True, False, True)
        assert exited.value.exit_code == code
    else:
        await main._follow_to_the_end(c, "r", True, False, True)


async def test_detached_says_how_to_follow_it_again(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited:
        await main._follow_to_the_end(clients(STARTED, FakeRuns([])), "r", True, False, True)
    assert exited.value.exit_code == follow.EXIT_DETACHED == 6
    said = capsys.readouterr().err
    assert "detached (down): the run goes on; follow it with `nyxflow run follow r`" in said

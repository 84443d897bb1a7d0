"""Following a run's events in the terminal: a line per step, fan-out progress, tokens.

A run is followed to its terminal event whatever happens to the stream it is followed on: the
engine's Execute stream can end without one (the engine drained and handed the run over, it
lost its lease, the key was revoked), break (UNAVAILABLE), or go silent (a frozen engine holds
it open without a word until gRPC's keepalive gives up), while the run goes on. The rest then
comes from runs' WatchRun after the last seq shown: nothing twice, nothing restarted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable

from nyxflow import events as ev
from nyxflow.cli.connection import Clients, one_line
from nyxflow.cli.render import console as make_console
from nyxflow.cli.render import line, status
from nyxflow.errors import FailedPrecondition, NotFound, NyxflowError, Unavailable
from nyxflow.v1 import common_pb2 as pb

console = make_console()

# The exit code of a followed run by its final status (1 and 2 are errors and usage errors).
EXIT_FOR_STATUS = {ev.COMPLETED: 0, ev.FAILED: 3, ev.PAUSED: 4, ev.CANCELLED: 5}
# The run goes on, but the CLI could not follow it to its end.
EXIT_DETACHED = 6
# How long runs may stay out of reach (no event got through) before the CLI detaches.
WATCH_RETRY_S = 30.0
MAX_BACKOFF_S = 5.0
STATUS_OF_TERMINAL = {event: s for s, event in ev.TERMINAL_EVENT_FOR_STATUS.items()}


class Detached(Exception):
    """The run can no longer be followed (runs out of reach, the key refused): it goes on."""


class Printer:
    """Prints each event of a run once, however many streams give it."""

    def __init__(
        self,
        *,
        tokens: bool,
        as_json: bool,
        read_step: Callable[[str], Awaitable[pb.Step | None]] | None = None,
    ) -> None:
        self.tokens, self.as_json = tokens, as_json
        self.read_step = read_step  # for a step_completed that left a long output out
        self.last = 0  # the last seq shown
        self.final = ""  # the run's final status, once its terminal event is shown

    async def relay(
        self, stream: AsyncGenerator[pb.RunEvent, None], silence_s: float | None = None
    ) -> None:
        """Print `stream` until its terminal event or its end; one silent for `silence_s` is
        given up as UNAVAILABLE."""
        async with contextlib.aclosing(stream):  # the call ends here, not when collected
            while True:
                waiting = asyncio.timeout(silence_s)
                try:
                    async with waiting:
                        event = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not waiting.expired():
                        raise
                    raise Unavailable(f"the engine said nothing for {silence_s:g} s") from None
                if event.seq <= self.last:
                    continue  # shown already, from the stream before this one
                data = json.loads(event.data_json or "{}")
                read = self.read_step
                if self.as_json and read is not None and data.get("output_left_out"):
                    # Before `last` moves: a read that fails has the event given again.
                    data = await _with_output(data, read)
                self.last = event.seq
                if self.as_json:
                    print(json.dumps({"seq": event.seq, "type": event.type, **data}), flush=True)
                else:
                    _show(event.type, data, self.tokens)
                if event.type in ev.TERMINAL_EVENTS:
                    self.final = STATUS_OF_TERMINAL[event.type]
                    return


async def _with_output(
    data: dict[str, object], read_step: Callable[[str], Awaitable[pb.Step | None]]
) -> dict[str, object]:
    """step_completed's `data` with the output the engine left out of it (a long one), read
    from the step: its JSON line has the output as a short one's has. A step that no longer
    holds this run's output (see `this_runs_step`) leaves the event as it came."""
    step = await read_step(str(data["step_id"]))
    if step is None:
        return data
    return {**{k: v for k, v in data.items() if k != "output_left_out"}, "output": step.output}


def this_runs_step(c: Clients, run_id: str) -> Callable[[str], Awaitable[pb.Step | None]]:
    """A step as this run left it, or None: steps hold their workflow's latest run's state, so
    an older run's replay (after a rerun, a retry or a choice) would have printed another run's
    output, and a generated step dropped since is gone (NotFound stopped the follow)."""

    async def read(step_id: str) -> pb.Step | None:
        try:
            step = await c.runs.get_step(step_id)
        except NotFound:
            return None
        run = await c.runs.get_run(run_id, brief=True)
        newest = await c.runs.list_runs_page(run.workflow_id, limit=1)  # as GetRun's latest
        return step if [r.id for r in newest.runs] == [run_id] else None

    return read


async def follow_run(c: Clients, run_id: str, *, start: bool, tokens: bool, as_json: bool) -> str:
    """Start the run (if `start`) through the engine and follow it to its terminal event;
    return its final status. Raises Detached when it can no longer be followed. The engine's
    stream silent for `c.execute_silence_s` is left for WatchRun: the engine may be frozen
    while its run is swept and finished (or failed) elsewhere. Execute sends nothing during a
    step that streams no tokens (a test command), so such a step costs only the switch."""
    printer = Printer(tokens=tokens, as_json=as_json, read_step=this_runs_step(c, run_id))
    if start:
        await _execute(c, run_id, printer)
    loop = asyncio.get_running_loop()
    give_up, backoff = loop.time() + WATCH_RETRY_S, 0.2
    while not printer.final:
        before = printer.last
        try:
            await printer.relay(c.runs.watch_run(run_id, printer.last))
            why = "the run's stream ended before the run did"
        except Unavailable as error:
            why = one_line(error)
        except NyxflowError as error:  # a key revoked meanwhile, say: no retry helps
            raise Detached(one_line(error)) from None
        if printer.final:
            break
        if printer.last > before:
            give_up, backoff = loop.time() + WATCH_RETRY_S, 0.2
        if loop.time() + backoff > give_up:
            raise Detached(why)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
    return printer.final


async def _execute(c: Clients, run_id: str, printer: Printer) -> None:
    """The run's events from the engine that starts it, as far as that stream goes (or until
    it says nothing for `c.execute_silence_s`)."""
    try:
        await printer.relay(c.engine.execute(run_id), c.execute_silence_s)
    except FailedPrecondition:
        return  # someone else (a browser) started it first: it is watched instead
    except NyxflowError:
        if printer.last:
            return  # under way: the engine went away under it, the run did not
        if (await c.runs.get_run(run_id, brief=True)).status == ev.PENDING:
            raise  # nothing started: the reason is the error


def _show(kind: str, data: dict[str, object], tokens: bool) -> None:
    # Every value from an event is a plain part of a `line`: model text is never markup, and
    # its control characters (an ESC) never reach the terminal.
    name = str(data.get("name", ""))
    if kind == ev.RUN_STARTED:
        console.print(line(("run started", "blue")))
    elif kind == ev.STEP_STARTED:
        phase = f" · {data['phase']}" if data.get("phase") else ""
        console.print(line(f"▶ {name} ", (f"({data.get('kind')}{phase})", "grey50")))
    elif kind == ev.STEP_DELTA and tokens and data.get("reset"):
        console.print(line("\n", ("… stream broke off; retrying", "yellow")))
    elif kind == ev.STEP_DELTA and tokens:
        console.print(line(str(data.get("text", ""))), end="")
    elif kind == ev.PROVIDER_FALLBACK:
        fell = f"↪ {data.get('from')} → {data.get('to')}: {data.get('reason')}"
        console.print(line((fell, "yellow")))
    elif kind == ev.STEP_COMPLETED:
        note = ("truncated", "yellow") if data.get("truncated") else ""
        served = data.get("served_by", "")
        text = f"\n✓ {name} · {data.get('output_tokens', 0)} tokens · {served}"
        console.print(line(text, " " if note else "", note))
    elif kind == ev.STEP_FAILED:
        console.print(line(f"✗ {name}: ", (str(data.get("error")), "red")))
    elif kind == ev.FAN_OUT_PROGRESS:
        done, total = int(str(data.get("done", 0))), int(str(data.get("total", 0)))
        filled = int(20 * done / total) if total else 20
        bar = "█" * filled + "░" * (20 - filled)
        console.print(line(f"  {bar} {done}/{total} · {data.get('heading', '')}"))
    elif kind == ev.RUN_REQUEUED:
        console.print(line((f"⇄ handed to another engine ({data.get('reason')})", "yellow")))
    elif kind == ev.STEPS_GENERATED:
        console.print(line(f"+ {data.get('count')} steps generated"))
    elif kind in ev.TERMINAL_EVENTS:
        error = f": {data['error']}" if data.get("error") else ""
        console.print(line("run ", status(str(data.get("status", ""))), error))

"""Following a run's events in the terminal: a line per step, fan-out progress, tokens."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from nyxflow import events as ev
from nyxflow.cli.render import console as make_console
from nyxflow.cli.render import line, status
from nyxflow.v1 import common_pb2 as pb

console = make_console()


async def follow(stream: AsyncIterator[pb.RunEvent], *, tokens: bool, as_json: bool) -> str:
    """Print every event until the terminal one; return the run's final status."""
    final = ""
    async for event in stream:
        data = json.loads(event.data_json or "{}")
        if as_json:
            print(json.dumps({"seq": event.seq, "type": event.type, **data}), flush=True)
        else:
            _show(event.type, data, tokens)
        if event.type in ev.TERMINAL_EVENTS:
            final = str(data.get("status", ""))
    return final


def _show(kind: str, data: dict[str, object], tokens: bool) -> None:
    # Every value from an event is a plain part of a `line`: model text is never markup.
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

"""Following a run's events in the terminal: a line per step, fan-out progress, tokens."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from rich.console import Console

from nyxflow import events as ev
from nyxflow.cli.render import status
from nyxflow.v1 import common_pb2 as pb

console = Console()


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
    name = data.get("name", "")
    if kind == ev.RUN_STARTED:
        console.print("[blue]run started[/]")
    elif kind == ev.STEP_STARTED:
        phase = f" · {data['phase']}" if data.get("phase") else ""
        console.print(f"▶ {name} [grey50]({data.get('kind')}{phase})[/]")
    elif kind == ev.STEP_DELTA and tokens and data.get("reset"):
        console.print("\n[yellow]… stream broke off; retrying[/]")
    elif kind == ev.STEP_DELTA and tokens:
        console.print(str(data.get("text", "")), end="", markup=False, highlight=False)
    elif kind == ev.PROVIDER_FALLBACK:
        console.print(f"[yellow]↪ {data.get('from')} → {data.get('to')}: {data.get('reason')}[/]")
    elif kind == ev.STEP_COMPLETED:
        note = " [yellow]truncated[/]" if data.get("truncated") else ""
        served = data.get("served_by", "")
        console.print(f"\n✓ {name} · {data.get('output_tokens', 0)} tokens · {served}{note}")
    elif kind == ev.STEP_FAILED:
        console.print(f"✗ {name}: [red]{data.get('error')}[/]")
    elif kind == ev.FAN_OUT_PROGRESS:
        done, total = int(str(data.get("done", 0))), int(str(data.get("total", 0)))
        filled = int(20 * done / total) if total else 20
        bar = "█" * filled + "░" * (20 - filled)
        console.print(f"  {bar} {done}/{total} · {data.get('heading', '')}")
    elif kind == ev.RUN_REQUEUED:
        console.print(f"[yellow]⇄ handed to another engine ({data.get('reason')})[/]")
    elif kind == ev.STEPS_GENERATED:
        console.print(f"+ {data.get('count')} steps generated")
    elif kind in ev.TERMINAL_EVENTS:
        error = f": {data['error']}" if data.get("error") else ""
        console.print(f"run {status(str(data.get('status', '')))}{error}")

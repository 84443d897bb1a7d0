"""`collect_findings`: the analysis' JSON findings, normalised and stored as rows."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import Any

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.registry import ToolCall

SEVERITIES = ("critical", "high", "medium", "low", "info")
MAX_FINDINGS = 5_000
# What the output (a report's prompt) lists: the most severe first, each message cut short.
LISTED = 200
LISTED_MESSAGE = 500


# What moves a bracket's depth: a JSON string (its brackets are text), or a bracket.
_DEPTH_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|[\[\]{}]')
_OPENING = re.compile(r"[\[{]+")


def json_values(text: str) -> list[Any]:
    """Every JSON array or object embedded in model output (fenced or not), in order. One
    nested deeper than the decoder can go (a RecursionError: "[[[[…" in an answer) is skipped
    whole, up to where its brackets close, or to the end: retried one bracket further each
    time, thousands of them cost seconds each run, and none of it is a finding."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while position < len(text):
        starts = [i for i in (text.find("[", position), text.find("{", position)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        except RecursionError:
            position = _closed(text, start)
            continue
        values.append(value)
        position = end
    return values


def _closed(text: str, start: int) -> int:
    """Where the brackets opened at `start` are closed again; if never, just past the run
    of brackets that opens there: the findings after a stray "[[[[…" that never closes are
    whole values of their own, and were dropped with it, every one to the end."""
    depth = 0
    for token in _DEPTH_TOKENS.finditer(text, start):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
        elif bracket in ("]", "}"):
            depth -= 1
            if depth <= 0:
                return token.end()
    run = _OPENING.match(text, start)
    return run.end() if run else start + 1


MAX_LINE = 2**31 - 1  # Finding.line is an int32
# A lone surrogate ("\ud83d", half an emoji cut by the model) is no UTF-8: the message
# could not be sent, and the whole step failed with it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def finding(value: Any) -> pb.Finding | None:
    if not isinstance(value, dict) or not value.get("file") or not value.get("message"):
        return None
    severity = str(value.get("severity", "info")).lower()
    line = value.get("line", 0)
    fits = isinstance(line, int) and not isinstance(line, bool) and 0 < line <= MAX_LINE
    return pb.Finding(
        file=_text(value["file"])[:1000],
        line=line if fits else 0,  # no line: past int32 it is no line of any file
        severity=severity if severity in SEVERITIES else "info",
        category=_text(value.get("category", ""))[:100],
        message=_text(value["message"])[:10_000],
    )


def _text(value: Any) -> str:
    return _SURROGATE.sub("\ufffd", str(value))


async def collect_findings(call: ToolCall) -> str:
    found: list[pb.Finding] = []
    dropped = 0  # beyond MAX_FINDINGS: counted, so the report can say what it left out
    # A long answer takes a while to read: not on the loop every run's events go through.
    for value in await asyncio.to_thread(json_values, call.prompt):
        for entry in value if isinstance(value, list) else [value]:
            if (item := finding(entry)) is None:
                continue
            if len(found) < MAX_FINDINGS:
                found.append(item)
            else:
                dropped += 1
    await call.save([], found)
    by_severity = Counter(f.severity for f in found)
    listed = sorted(found, key=lambda f: SEVERITIES.index(f.severity))[:LISTED]
    return json.dumps(
        {
            "count": len(found),
            "dropped": dropped,
            "by_severity": {s: by_severity[s] for s in SEVERITIES if by_severity[s]},
            "listed": len(listed),
            "findings": [
                {"file": f.file, "line": f.line, "severity": f.severity,
                 "category": f.category, "message": _short(f.message)}
                for f in listed
            ],
        },
        indent=2,
    )  # fmt: skip


def _short(message: str) -> str:
    return message if len(message) <= LISTED_MESSAGE else message[:LISTED_MESSAGE] + "…"

"""`collect_findings`: what it stores, and what it says it left out."""

from __future__ import annotations

import json
from collections.abc import Sequence

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.findings import MAX_FINDINGS, collect_findings
from nyxflow_engine.tools.registry import ToolCall


async def test_findings_beyond_the_cap_are_counted_as_dropped() -> None:
    stored: list[pb.Finding] = []

    async def save(_: Sequence[pb.Artifact], findings: Sequence[pb.Finding]) -> None:
        stored.extend(findings)

    answers = [
        json.dumps([{"file": f"f{i}.py", "line": 1, "message": "m"} for i in range(start, end)])
        for start, end in ((0, MAX_FINDINGS - 2), (MAX_FINDINGS - 2, MAX_FINDINGS + 3))
    ]
    prompt = "\n\n".join([*answers, '[{"file": "no-message.py"}]'])

    report = json.loads(await collect_findings(ToolCall({}, prompt, save)))

    assert (report["count"], report["dropped"]) == (MAX_FINDINGS, 3)
    assert len(stored) == MAX_FINDINGS and stored[-1].file == f"f{MAX_FINDINGS - 1}.py"


async def test_nothing_is_dropped_under_the_cap() -> None:
    async def save(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
        return None

    prompt = '[{"file": "a.py", "line": 2, "severity": "HIGH", "message": "m"}]'
    report = json.loads(await collect_findings(ToolCall({}, prompt, save)))

    assert (report["count"], report["dropped"], report["by_severity"]) == (1, 0, {"high": 1})


async def test_the_output_lists_the_most_severe_findings_in_brief() -> None:
    """The output is the report's prompt: it listed the first 200 findings whole, messages of
    up to 10,000 characters each, and a critical one after 200 infos not at all."""

    async def save(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
        return None

    infos = [{"file": "a.py", "severity": "info", "message": "m" * 10_000}] * 200
    critical = {"file": "b.py", "severity": "critical", "message": "drops the table"}
    prompt = json.dumps([*infos, critical])

    report = json.loads(await collect_findings(ToolCall({}, prompt, save)))

    assert report["findings"][0]["message"] == "drops the table"
    assert report["count"] == 201 and report["listed"] == len(report["findings"]) == 200
    assert max(len(f["message"]) for f in report["findings"]) == 501  # 500 and "…"


async def test_brackets_nested_deeper_than_the_decoder_goes_are_skipped() -> None:
    """A model's answer may hold thousands of `[` (its prose, a cut-off dump): decoding them
    raised RecursionError, which failed the step and lost the findings around them."""

    async def save(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
        return None

    first = '[{"file": "a.py", "line": 1, "severity": "high", "message": "m"}]'
    closed = "[" * 5_000 + '"]]] in a string", {"x": 1}' + "]" * 5_000
    later = '[{"file": "b.py", "line": 2, "message": "after the closed nesting"}]'
    unclosed = "[" * 100_000
    last = '[{"file": "c.py", "line": 3, "message": "after a nesting never closed"}]'
    prompt = f"{first}\nThe nesting I saw: {closed}\n{later}\nand unclosed: {unclosed}\n{last}"

    report = json.loads(await collect_findings(ToolCall({}, prompt, save)))

    assert report["count"] == 3
    assert [f["file"] for f in report["findings"]] == ["a.py", "b.py", "c.py"]


async def test_a_line_past_int32_and_a_lone_surrogate_do_not_fail_the_step() -> None:
    """Finding.line is an int32 and its strings UTF-8: a line of 4294967296 or half an emoji
    ("\\ud83d") in a model's findings raised building the row, and the step failed with all
    its findings. The line becomes 0 (none), the lone surrogate U+FFFD; the rest is kept."""
    stored: list[pb.Finding] = []

    async def save(_: Sequence[pb.Artifact], findings: Sequence[pb.Finding]) -> None:
        stored.extend(findings)

    prompt = (
        '[{"file": "a.py", "line": 4294967296, "severity": "high", "message": "huge"},'
        ' {"file": "b.py", "line": 2147483647, "message": "the last int32"},'
        ' {"file": "c\\udc00.py", "line": -3000000000, "category": "x\\ud83d",'
        ' "message": "emoji cut \\ud83d here, whole \\ud83d\\ude00"}]'
    )

    report = json.loads(await collect_findings(ToolCall({}, prompt, save)))

    assert report["count"] == 3 and len(stored) == 3
    assert [f.line for f in stored] == [0, 2147483647, 0]
    assert (stored[2].file, stored[2].category) == ("c\ufffd.py", "x\ufffd")
    assert stored[2].message == "emoji cut \ufffd here, whole \U0001f600"

"""`review_patches`: check every proposed diff in a scratch clone, keep the good ones.

Each diff must pass `git apply --check` against HEAD plus the patches accepted before it; with
a test command, the tests must pass with it applied (within a timeout). The user's work tree
is never touched: the clone is a private copy of HEAD, removed afterwards. The accepted
patches are combined into one that applies cleanly to HEAD: the run's `patch` artifact.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.commands import run
from nyxflow_engine.tools.registry import ToolCall

FENCED_DIFF = re.compile(r"```(?:diff|patch)[^\n]*\n(.*?)```", re.DOTALL)
MAX_REASON = 2_000


def diffs_in(text: str) -> list[str]:
    """The diffs proposed, one per fenced block; empty blocks mean "no change"."""
    blocks = FENCED_DIFF.findall(text)
    if not blocks and ("\n+++ " in text or text.startswith("--- ")):
        blocks = [text]
    return [b if b.endswith("\n") else b + "\n" for b in blocks if b.strip()]


def files_of(diff: str) -> list[str]:
    return sorted(set(re.findall(r"^\+\+\+ b/(\S+)", diff, re.MULTILINE)))


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_REASON else "…" + text[-MAX_REASON:]


async def review_patches(call: ToolCall) -> str:
    params = call.params
    source = params.get("path")
    if not isinstance(source, str) or not await asyncio.to_thread(Path(source).is_dir):
        raise InvalidArgument("the repository's local path is required", field="params.path")
    command = params.get("test_command", "")
    if not isinstance(command, str):
        raise InvalidArgument("must be a string", field="params.test_command")
    timeout = params.get("test_timeout_s", 300)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidArgument("must be a positive number", field="params.test_timeout_s")
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="nyxflow-review-"))
    try:
        report, patch = await _review(
            Path(source), scratch / "repo", diffs_in(call.prompt), command, float(timeout)
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    await call.save(
        [
            pb.Artifact(name="patch", media_type="text/x-diff", content=patch),
            pb.Artifact(
                name="review", media_type="application/json", content=json.dumps(report, indent=2)
            ),
        ],
        [],
    )
    return json.dumps(report, indent=2)


async def _review(
    source: Path, clone: Path, diffs: list[str], command: str, timeout_s: float
) -> tuple[dict[str, Any], str]:
    cloned = await run(
        source.parent, "git", "clone", "--quiet", "--shared", str(source), str(clone)
    )
    if cloned.code != 0:
        message = f"cannot read the repository: {_tail(cloned.output)}"
        raise InvalidArgument(message, field="params.path")
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for index, diff in enumerate(diffs):
        entry: dict[str, Any] = {"index": index, "files": files_of(diff)}
        checked = await run(clone, "git", "apply", "--check", "-", stdin=diff.encode())
        if checked.code != 0:
            rejected.append({**entry, "reason": f"does not apply: {_tail(checked.output)}"})
            continue
        # Into the index too: the index holds the accepted diffs and nothing else.
        await run(clone, "git", "apply", "--index", "-", stdin=diff.encode())
        if command:
            home = clone.parent / "home"  # the command's own, inside the scratch folder
            home.mkdir(exist_ok=True)
            tested = await run(
                clone, *shlex.split(command), timeout_s=timeout_s, home=home, contained=True
            )
            # What the tests left (caches, bytecode, build output) is not part of any patch.
            await run(clone, "git", "clean", "-fdxq")
            await run(clone, "git", "checkout", "--", ".")
            if tested.code != 0:
                await run(clone, "git", "apply", "-R", "--index", "-", stdin=diff.encode())
                reason = f"tests failed (exit {tested.code}): {_tail(tested.output)}"
                rejected.append({**entry, "reason": reason})
                continue
        accepted.append(entry)
    combined = (await run(clone, "git", "diff", "--cached", "--no-color")).output
    report = {
        "proposed": len(diffs),
        "accepted": accepted,
        "rejected": rejected,
        "test_command": command or None,
        "patch_bytes": len(combined.encode()),
    }
    return report, combined

"""`review_patches`: check every proposed diff in a scratch clone, keep the good ones.

Each diff must apply (`git apply`, all or nothing) to HEAD plus the patches accepted before
it; with a test command, the tests must pass with it applied (within a timeout), else the
clone goes back to the tree it had before the diff. A diff whose block was cut off is never
applied. The user's work tree is never touched: the clone is a private copy of HEAD, removed
afterwards. The accepted patches are combined into one that applies cleanly to HEAD: the
run's `patch` artifact.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path
from typing import Any

from nyxflow.errors import FailedPrecondition, InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.commands import run
from nyxflow_engine.tools.diffs import Proposed, diffs_in, files_of
from nyxflow_engine.tools.registry import ToolCall
from nyxflow_engine.tools.sandbox import Sandbox
from nyxflow_engine.tools.scratch import make as make_scratch
from nyxflow_engine.tools.scratch import remove as remove_scratch

MAX_REASON = 2_000
CUT_OFF = "cut off: its ```diff block never closed (the answer stopped at its max_tokens?)"


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_REASON else "…" + text[-MAX_REASON:]


async def review_patches(call: ToolCall) -> str:
    params = call.params
    source = await call.repository()
    command = params.get("test_command", "")
    if not isinstance(command, str):
        raise InvalidArgument("must be a string", field="params.test_command")
    command = command.strip()  # blank: no tests (split, it would run nothing and fail)
    try:
        shlex.split(command)
    except ValueError as error:
        message = f"cannot be split into arguments: {error}"
        raise InvalidArgument(message, field="params.test_command") from None
    timeout = params.get("test_timeout_s", 300)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidArgument("must be a positive number", field="params.test_timeout_s")
    scratch = await asyncio.to_thread(make_scratch)
    try:
        report, patch = await _review(
            source, scratch / "repo", diffs_in(call.prompt), command, float(timeout), call.sandbox
        )
    finally:
        await asyncio.to_thread(remove_scratch, scratch)
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
    source: Path,
    clone: Path,
    diffs: list[Proposed],
    command: str,
    timeout_s: float,
    sandbox: Sandbox,
) -> tuple[dict[str, Any], str]:
    cloned = await run(
        source.parent, "git", "clone", "--quiet", "--shared", str(source), str(clone)
    )
    if cloned.code != 0:
        message = f"cannot read the repository: {_tail(cloned.output)}"
        raise InvalidArgument(message, field="params.path")
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for index, proposed in enumerate(diffs):
        diff = proposed.diff
        entry: dict[str, Any] = {"index": index, "files": files_of(diff)}
        if proposed.cut:
            rejected.append({**entry, "reason": CUT_OFF})
            continue
        # What a rejected diff is undone to: undoing it by `apply -R` would search for the
        # place again, and could find another one.
        before = (await _git(clone, "write-tree")).strip() if command else ""
        # Into the index too: the index holds the accepted diffs and nothing else.
        applied = await run(clone, "git", "apply", "--index", "-", stdin=diff.encode())
        if applied.code != 0:
            rejected.append({**entry, "reason": f"does not apply: {_tail(applied.output)}"})
            continue
        if command:
            home = clone.parent / "home"  # the command's own, inside the scratch folder
            home.mkdir(exist_ok=True)
            tested = await run(
                clone,
                *shlex.split(command),
                timeout_s=timeout_s,
                home=home,
                contained=True,
                sandbox=sandbox,
            )
            # What the tests left (caches, bytecode, build output) is not part of any patch.
            await _restore(clone, before if tested.code != 0 else None)
            if tested.code != 0:
                reason = f"tests failed (exit {tested.code}): {_tail(tested.output)}"
                rejected.append({**entry, "reason": reason})
                continue
        accepted.append(entry)
    # The patch as `git apply` and `patch -p1` take it, whatever the operator's git settings
    # (diff.noprefix, diff.external, a diff driver) would make of it.
    combined = await _git(
        clone,
        "diff",
        "--cached",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--src-prefix=a/",
        "--dst-prefix=b/",
    )
    report = {
        "proposed": len(diffs),
        "accepted": accepted,
        "rejected": rejected,
        "test_command": command or None,
        "patch_bytes": len(combined.encode()),
    }
    return report, combined


async def _git(clone: Path, *args: str) -> str:
    done = await run(clone, "git", *args, merge_stderr=False)
    if done.code != 0:
        why = _tail(done.errors or done.output)
        raise FailedPrecondition(f"git {args[0]} failed in the scratch clone: {why}")
    return done.output


async def _restore(clone: Path, tree: str | None) -> None:
    """The work tree back to the index, or (with `tree`) index and work tree to that tree;
    nothing untracked is left."""
    await _git(clone, "clean", "-fdxq")
    if tree:
        await _git(clone, "read-tree", "--reset", "-u", tree)
    else:
        await _git(clone, "checkout-index", "--all", "--force", "--index")

"""`review_patches`: check every proposed diff in a scratch clone, keep the good ones.

Each diff must apply (`git apply`, all or nothing) to HEAD plus the patches accepted before
it; with a test command, the tests must pass with it applied (within a timeout), else the
clone goes back to the tree it had before the diff. A diff whose block was cut off is never
applied. The user's work tree is never touched: the clone is a private copy of HEAD, removed
afterwards. The accepted patches are combined into one that applies cleanly to HEAD: the
run's `patch` artifact.

The engine's git reads and writes the clone's files, so it would run any filter, hook or
fsmonitor the clone's `.git` names: the test command (the tenant's code) must not write it.
In the sandbox it cannot (`Walls`: read-only there, and no other run's clone is in sight);
with `NYXFLOW_COMMAND_SANDBOX=none` it can, as it can read the engine's secrets outright:
that mode is for tenants the operator trusts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from nyxflow.errors import FailedPrecondition, InvalidArgument
from nyxflow.repos import root_folder
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.commands import GIT, Outcome, run
from nyxflow_engine.tools.diffs import Proposed, diffs_in, files_of, in_crlf
from nyxflow_engine.tools.head import commit_of, git
from nyxflow_engine.tools.registry import ToolCall
from nyxflow_engine.tools.sandbox import Sandbox, Walls
from nyxflow_engine.tools.scratch import make as make_scratch
from nyxflow_engine.tools.scratch import make_writable
from nyxflow_engine.tools.scratch import remove as remove_scratch

MAX_REASON = 2_000
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha1 or sha256, as the scan reports it
CUT_OFF = "cut off: its ```diff block never closed (the answer stopped at its max_tokens?)"
OUTSIDE = "names no path inside the repository (empty, absolute, through .. or with a NUL)"


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
    if _flag(params, "scanned"):
        scanned, answers = await asyncio.to_thread(_scanned, call.prompt)  # megabytes
        commit = await _scanned_commit(source, scanned)
    else:
        answers, commit = call.prompt, await _head_commit(source)
    scratch = await asyncio.to_thread(make_scratch)
    try:
        clone = scratch / "repo"
        objects = await _clone(source, clone, commit)
        # The repositories are shown read-only: the source's objects are the clone's too. The
        # root as the tools read it (`~/repos`, a relative one): a wall names a real folder.
        roots = [Path(root_folder(call.repos_root))] if call.repos_root else []
        shown = (source, objects, *roots)
        walls = Walls(scratch.parent, (clone, scratch / "home"), (clone / ".git", *shown))
        tests = Tests(command, float(timeout), call.sandbox, walls)
        report, patch = await _review(clone, await asyncio.to_thread(diffs_in, answers), tests)
    finally:
        await asyncio.to_thread(remove_scratch, scratch)
    report = {"head": commit, **report}
    if patch:  # what it applies to, where `git apply` reads no further than a comment
        patch = f"base-commit: {commit}\n{patch}"
        report["patch_bytes"] = len(patch.encode())
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


@dataclass(frozen=True)
class Tests:
    command: str  # "": none
    timeout_s: float
    sandbox: Sandbox
    walls: Walls


def _flag(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument("must be true or false", field=f"params.{key}")
    return value


def _scanned(prompt: str) -> tuple[str, str]:
    """With `params.scanned`, the prompt opens with the scan's output (the pipelines' Review:
    `{{ steps.Scan.output }}`, then the answers): the commit it read ("": the repository had
    none), and the rest of the prompt, where the diffs are."""
    try:
        scan, end = json.JSONDecoder().raw_decode(prompt)
    except json.JSONDecodeError:
        scan, end = None, 0
    head = scan.get("head", "") if isinstance(scan, dict) else ""
    if head is not None and not (isinstance(head, str) and COMMIT.fullmatch(head)):
        message = "with params.scanned, must open with a repository scan's output (its head)"
        raise InvalidArgument(message, field="prompt")
    return head or "", prompt[end:]


async def _scanned_commit(source: Path, scanned: str) -> str:
    """The commit the scan read: the diffs were written against it, and HEAD may have moved
    since (a checkout, a commit, a run resumed days later)."""
    if not scanned:
        _no_commits(source)
    if not await commit_of(source, scanned):
        raise FailedPrecondition(
            f"the scanned commit {scanned} is no longer in {source} (its branch deleted, and "
            "the commit collected?): the diffs were written against it; run the pipeline "
            "again",
            field="params.path",
        )
    return scanned


async def _head_commit(source: Path) -> str:
    commit = await commit_of(source)
    if not commit:
        _no_commits(source)
    return commit


def _no_commits(source: Path) -> NoReturn:
    # The scan showed its index: no patch could name the commit it applies to.
    message = f"{source} has no commits yet: the review patches HEAD; commit the files first"
    raise InvalidArgument(message, field="params.path")


async def _clone(source: Path, clone: Path, commit: str) -> Path:
    """A private copy of the source's `commit`: a git dir of the engine's, and the source's
    objects (alternates). Not `git clone`, which runs upload-pack in the source under its
    config (the tenant's): git here only reads the source's refs and objects. Its objects
    folder."""
    objects = await git(source, "rev-parse", "--path-format=absolute", "--git-path", "objects")
    form = (await git(source, "rev-parse", "--show-object-format")).strip()
    await _git(clone.parent, "init", "--quiet", f"--object-format={form}", str(clone))
    alternates = clone / ".git" / "objects" / "info" / "alternates"
    alternates.parent.mkdir(parents=True, exist_ok=True)
    alternates.write_text(objects)
    await _git(clone, "update-ref", "--no-deref", "HEAD", commit)
    await _git(clone, "read-tree", "--reset", "-u", "HEAD")
    return Path(objects.strip())


async def _review(clone: Path, diffs: list[Proposed], tests: Tests) -> tuple[dict[str, Any], str]:
    command = tests.command
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for index, proposed in enumerate(diffs):
        diff = proposed.diff
        entry: dict[str, Any] = {"index": index, "files": files_of(diff)}
        if proposed.cut:
            rejected.append({**entry, "reason": CUT_OFF})
            continue
        if unfit := [name for name in entry["files"] if _outside(name)]:  # "" is one
            rejected.append({**entry, "reason": f"{OUTSIDE}: {unfit[0]!r}"})
            continue
        # What a rejected diff is undone to: undoing it by `apply -R` would search for the
        # place again, and could find another one.
        before = (await _git(clone, "write-tree")).strip() if command else ""
        applied = await _apply(clone, diff)
        if applied.code != 0 and (crlf := await _crlf(clone, entry["files"])):
            applied = await _apply(clone, in_crlf(diff, crlf))  # as the model read them
        if applied.code != 0:
            rejected.append({**entry, "reason": f"does not apply: {_tail(applied.output)}"})
            continue
        if command:
            home = clone.parent / "home"  # the command's own, inside the scratch folder
            home.mkdir(exist_ok=True)
            tested = await run(
                clone,
                *shlex.split(command),
                timeout_s=tests.timeout_s,
                home=home,
                contained=True,
                sandbox=tests.sandbox,
                walls=tests.walls,
            )
            # What the tests left (caches, bytecode, build output) is not part of any patch.
            await _restore(clone, before if tested.code != 0 else None)
            if tested.code != 0:
                reason = f"tests failed (exit {tested.code}): {_tail(tested.output)}"
                rejected.append({**entry, "reason": reason})
                continue
        accepted.append(entry)
    combined = await _combined(clone)
    report = {
        "proposed": len(diffs),
        "accepted": accepted,
        "rejected": rejected,
        "test_command": command or None,
        "patch_bytes": len(combined.encode()),
    }
    return report, combined


def _outside(name: str) -> bool:
    """Whether a diff's file name (`files_of`'s) is no path in the clone: git would refuse
    it, and `ls-files` on it fails outright (or, with a NUL, it cannot be passed at all)."""
    return not name or name.startswith("/") or ".." in name.split("/") or "\0" in name


async def _apply(clone: Path, diff: str) -> Outcome:
    """`diff` applied, into the index too (it holds the accepted diffs and nothing else); if
    it does not apply as written, once more with --recount: models miscount a hunk's lines
    (`@@ -1,6 +1,6 @@` over five), which git calls a corrupt patch. Only then: recounting, git
    reads a hunk on to the next `@@` or `diff` line, so a second file's ---/+++ lines in a
    block without `diff --git` lines went into the first file's hunk."""
    applied = await run(clone, *GIT, "apply", "--index", "-", stdin=diff.encode())
    if applied.code == 0:
        return applied
    return await run(clone, *GIT, "apply", "--index", "--recount", "-", stdin=diff.encode())


async def _crlf(clone: Path, names: list[str]) -> set[str]:
    """Which of the files a diff names (the model's names) are tracked in the clone and end
    their lines in CRLF there. Tracked, read from the index's blobs: a name through a
    symlinked folder would be read outside the clone."""
    if not names:
        return set()
    # Literal: a name holding `*` or `[` is no pattern.
    args = ("--literal-pathspecs", "ls-files", "-s", "-z", "--", *names)
    listed = await run(clone, *GIT, *args, merge_stderr=False)
    if listed.code != 0:  # a name git cannot take: none in CRLF, the diff's own reason stands
        return set()
    found = set()
    for record in listed.output.split("\0"):
        if not record:
            continue
        meta, name = record.split("\t", 1)
        mode, oid, _ = meta.split()
        if mode in ("100644", "100755"):
            blob = await _git_bytes(clone, "cat-file", "blob", oid)
            if b"\r\n" in blob.data[: 1 << 16]:
                found.add(name)
    return found


async def _git(clone: Path, *args: str) -> str:
    return (await _git_bytes(clone, *args, binary=False)).output


async def _git_bytes(clone: Path, *args: str, binary: bool = True) -> Outcome:
    done = await run(clone, *GIT, *args, merge_stderr=False, binary=binary)
    if done.code != 0:
        why = _tail(done.errors or done.output)
        raise FailedPrecondition(f"git {args[0]} failed in the scratch clone: {why}")
    return done


# The patch as `git apply` and `patch -p1` take it, whatever the operator's git settings
# (diff.noprefix, diff.external, a diff driver, core.quotePath=false) would make of it.
# --binary --full-index: a file the repository marks `-diff` or `binary` (*.min.js) is
# otherwise "Binary files differ", which nothing can apply.
DIFF = (
    *("-c", "core.quotePath=true"),  # names outside ASCII escaped: a name is never raw bytes
    "diff",
    "--cached",
    "--binary",
    "--full-index",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)


async def _combined(clone: Path) -> str:
    """The index's changes against HEAD as one patch, stored as text (an artifact is a
    string). A file whose diff is not text (Latin-1 lines, a NUL its `diff` attribute let
    through) is given as a binary patch, plain ASCII, that applies the same: decoded, its
    bytes would be replaced (U+FFFD), and the patch would apply to nothing."""
    text = _text((await _git_bytes(clone, *DIFF)).data)
    if text is not None:
        return text
    raw = (await _git_bytes(clone, "diff", "--cached", "--raw", "-z", "--no-abbrev")).data
    binary: list[bytes] = []
    for names in _changed(raw):
        spec = [f":(literal){os.fsdecode(name)}" for name in names]
        if _text((await _git_bytes(clone, *DIFF, "--", *spec)).data) is None:
            binary.extend(names)
    attributes = clone / ".git" / "info" / "attributes"
    attributes.parent.mkdir(parents=True, exist_ok=True)
    attributes.write_bytes(b"".join(_pattern(name) + b" -diff\n" for name in binary))
    text = _text((await _git_bytes(clone, *DIFF)).data)
    if text is None:  # never a patch with bytes replaced: it would apply to nothing
        raise FailedPrecondition("the combined patch cannot be written as text")
    return text


def _text(patch: bytes) -> str | None:
    """`patch` as text, or None if it holds bytes no text can (invalid UTF-8, a NUL)."""
    try:
        text = patch.decode()
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def _changed(raw: bytes) -> list[list[bytes]]:
    """The names of each change of `git diff --raw -z` (two for a rename or a copy)."""
    fields = raw.split(b"\0")
    changes: list[list[bytes]] = []
    i = 0
    while i < len(fields) and fields[i].startswith(b":"):
        status = fields[i].split()[-1]
        count = 2 if status[:1] in (b"R", b"C") else 1
        changes.append(fields[i + 1 : i + 1 + count])
        i += 1 + count
    return changes


def _pattern(name: bytes) -> bytes:
    """An attributes pattern that matches `name` (from the top) and nothing else: its glob
    characters escaped, the whole quoted C-style (a space, a quote, any byte as it is)."""
    glob = re.sub(rb"([\\*?\[])", rb"\\\1", b"/" + name)
    quoted = "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\{byte:03o}"
        for byte in glob
    )
    return f'"{quoted}"'.encode()


async def _restore(clone: Path, tree: str | None) -> None:
    """The work tree back to the index, or (with `tree`) index and work tree to that tree;
    nothing untracked is left."""
    try:
        await _put_back(clone, tree)
    except FailedPrecondition:  # a read-only folder the tests left (a Go module cache, say)
        await asyncio.to_thread(make_writable, clone)
        await _put_back(clone, tree)


async def _put_back(clone: Path, tree: str | None) -> None:
    # -f twice: a nested repository the tests made (a git tool's fixtures) goes too; with one,
    # clean leaves it, and the next diff's tests find it there.
    await _git(clone, "clean", "-ffdxq")
    if tree:
        await _git(clone, "read-tree", "--reset", "-u", tree)
    else:
        await _git(clone, "checkout-index", "--all", "--force", "--index")

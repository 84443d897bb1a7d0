"""A repository's files as its HEAD commit has them, read from git's objects.

The review applies patches to a clone of HEAD, so the scan shows HEAD too: a model shown
uncommitted edits writes diffs that HEAD rejects. And an object is never a path on disk: a
tracked symlink (to /proc/self/environ, to a file outside the repository) is a blob holding
its target's name, never followed. Symlinks and submodules are listed as skipped, not read.
A repository without commits yet is read from its index's objects, just as safely.

The repository is the tenant's, and so is its config: git here only reads objects, the index
and refs (`GIT` turns off what could run a program even then), and never the work tree's
contents, which would run the filters its config names (see `uncommitted`).

Names are read as bytes: a name git holds is any bytes, and decoded (to show it) it may no
longer name the file on disk (b"caf\xe9.py" is "caf\ufffd.py").
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from nyxflow.errors import InvalidArgument
from nyxflow_engine.tools.commands import GIT, Outcome, run

FILE_MODES = ("100644", "100755")
SKIPPED = {"120000": "symlinks", "160000": "submodules"}


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the scanned folder, as shown (not UTF-8: decoded with U+FFFD)
    size: int
    oid: str
    name: bytes  # `path` as git holds it: what names the file on disk


@dataclass
class Head:
    commit: str  # "" in a repository without commits
    files: list[Entry] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # kind -> paths


async def git(path: Path, *args: str, stdin: bytes = b"") -> str:
    return (await _git(path, *args, stdin=stdin)).output


async def _listing(path: Path, *args: str) -> bytes:
    """git's stdout undecoded: the names in it as git holds them."""
    return (await _git(path, *args, binary=True)).data


async def _git(path: Path, *args: str, stdin: bytes = b"", binary: bool = False) -> Outcome:
    done = await run(
        path, *GIT, "-C", str(path), *args, stdin=stdin, merge_stderr=False, binary=binary
    )
    if done.code != 0:
        message = done.errors.strip()
        raise InvalidArgument(f"{path} is not a git work tree: {message}", field="params.path")
    return done


async def head_of(path: Path) -> Head:
    """HEAD's files of the work tree at `path` (its top folder: `ToolCall.repository` made
    sure), as `ls-files` names them; in a repository without commits, what is staged."""
    commit = await commit_of(path)
    if not commit:
        return await _staged(path)
    # The commit, not HEAD again: a checkout or a commit meanwhile would list another tree
    # than the commit the scan reports (and the review patches).
    listing = await _listing(path, "ls-tree", "-r", "-l", "-z", commit)
    # In a thread: 400,000 files took 3.3 s to parse, every other run's events held meanwhile.
    return await asyncio.to_thread(_tree, commit, listing)


def _tree(commit: str, listing: bytes) -> Head:
    """`git ls-tree -r -l -z` of `commit`, parsed."""
    head = Head(commit)
    for record in listing.split(b"\0"):
        if record:
            meta, name = record.split(b"\t", 1)
            mode, _, oid, size = meta.decode().split()
            _add(head, mode, name, oid, size)
    return head


async def commit_of(path: Path, name: str = "HEAD") -> str:
    """The commit `name` (HEAD, a commit id) names; "" if none (a repository without commits,
    an id it does not hold)."""
    try:
        return (await git(path, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")).strip()
    except InvalidArgument:
        return ""


async def _staged(path: Path) -> Head:
    head = Head("")
    listing = await _listing(path, "ls-files", "-s", "-z")
    records = [r.split(b"\t", 1) for r in listing.split(b"\0") if r]
    staged = [(meta.decode().split(), name) for meta, name in records]
    files = [oid for (mode, oid, _), _ in staged if mode in FILE_MODES]
    done = await run(path, *GIT, "-C", str(path), "cat-file", "--batch-check", stdin=_lines(files))
    sizes: dict[str, str] = {}
    for line in done.output.splitlines():  # "<oid> <type> <size>"
        oid, _, size = line.partition(" blob ")
        sizes[oid] = size.strip() or "0"
    for (mode, oid, _), name in staged:
        _add(head, mode, name, oid, sizes.get(oid, "0"))
    return head


def _add(head: Head, mode: str, name: bytes, oid: str, size: str) -> None:
    shown = name.decode(errors="replace")  # as every other name git gives the engine
    if mode in FILE_MODES:
        head.files.append(Entry(shown, int(size), oid, name))
    else:
        head.skipped.setdefault(SKIPPED.get(mode, "other"), []).append(shown)


def _lines(oids: Sequence[str]) -> bytes:
    return "".join(f"{oid}\n" for oid in oids).encode()


async def contents(path: Path, entries: Sequence[Entry], limit: int) -> dict[str, bytes]:
    """The first `limit` bytes of each blob of `entries`, by path, in one `git cat-file
    --batch`. The rest is skipped where git wrote it: a tracked dump of gigabytes, read whole
    to show 20 KB of it, could take the engine's memory (and every run on it) down."""
    if not entries:
        return {}
    asked = _lines([e.oid for e in entries])
    heads: list[bytes] = []

    def read(out: IO[bytes]) -> bytes:
        for _ in entries:  # "<oid> blob <size>\n<content>\n" each, in the order asked
            header = out.readline().split()
            if len(header) != 3 or header[1] != b"blob":
                break  # "<oid> missing", or git stopped: named below
            size = int(header[2])
            heads.append(out.read(min(size, limit)))
            out.seek(size - len(heads[-1]) + 1, os.SEEK_CUR)  # the rest, and its newline
        return b""

    done = await run(path, *GIT, "-C", str(path), "cat-file", "--batch", stdin=asked, read=read)
    if done.code != 0:
        raise InvalidArgument(
            f"cannot read {path}'s objects: {done.errors.strip()}", field="params.path"
        )
    if len(heads) < len(entries):
        missing = entries[len(heads)].path
        raise InvalidArgument(f"cannot read {missing} in {path}", field="params.path")
    return {entry.path: head for entry, head in zip(entries, heads, strict=True)}


async def uncommitted(path: Path, head: Head | None = None) -> list[str]:
    """Tracked files whose index or work tree differs from `head` (`head_of(path)` if not
    given: pass the scan's, so that both name the same commit; `path` is the top folder)."""
    head = head or await head_of(path)
    # The index against the commit: objects only. Not `git diff HEAD`: to compare a file whose
    # stat changed, git reads it through the clean filter the repository's config names.
    staged = await git(
        path, "diff-index", "--cached", "--name-only", "-z", "--no-renames", head.commit
    )
    changed = {name for name in staged.split("\0") if name}
    # Not on disk by design: a sparse checkout's files outside its cone (skip-worktree), which
    # git itself never compares with the work tree either.
    skipped = await _skip_worktree(path)
    on_disk = [entry for entry in head.files if entry.name not in skipped]
    unsure = await asyncio.to_thread(_differing_in_size, path, on_disk, changed)
    # The rest hashed as they are on disk: no filter, no attribute read.
    names = b"".join(_quoted(entry.name) + b"\n" for entry in unsure)
    hashed = (await git(path, "hash-object", "--no-filters", "--stdin-paths", stdin=names)).split()
    changed.update(e.path for e, oid in zip(unsure, hashed, strict=True) if oid != e.oid)
    return sorted(changed)


async def _skip_worktree(path: Path) -> set[bytes]:
    """The index's entries marked skip-worktree ("S " in `ls-files -t`), by name."""
    listing = await _listing(path, "ls-files", "-t", "-z")
    return {record[2:] for record in listing.split(b"\0") if record.startswith(b"S ")}


def _differing_in_size(path: Path, files: Sequence[Entry], changed: set[str]) -> list[Entry]:
    """Adds to `changed` the files gone, no longer regular files, or of another size; returns
    the others, whose contents must be compared."""
    same: list[Entry] = []
    top = os.fsencode(path)
    for entry in files:
        try:
            found = os.lstat(os.path.join(top, entry.name))
        except OSError:
            changed.add(entry.path)
            continue
        if stat.S_ISREG(found.st_mode) and found.st_size == entry.size:
            same.append(entry)
        else:
            changed.add(entry.path)
    return same


def _quoted(name: bytes) -> bytes:
    """A name as `--stdin-paths` reads it whatever it holds (a newline, a leading quote, bytes
    that are not UTF-8: taken as they are)."""
    escaped = name.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
    return b'"' + escaped + b'"'

"""The diffs in models' answers: fenced ```diff (or ```patch) blocks, whole ones only.

A fence is a line that starts with ``` at its first column; the block closes at a line of
only backticks (as many as opened it, or more). A diff never has such a line (each of its
lines starts with ' ', '+', '-', '@', '\\' or a header word), so a diff that changes a
markdown file's own fences is read whole. A fence that opens while a block is still open
means that block was cut off (an answer stopped at max_tokens, with the next answer after
it), as does the text's end: a cut block is reported, never applied. Half a diff that happens
to apply would otherwise be accepted as the whole change.

A diff written outside any block (or in a block without a language) is read too, each one
on its own, wherever it stands among the answers: every diff proposed is reviewed. A fan-out
marks where an answer stopped at its token limit (cut_off.py): a bare diff just before that
line, or a block open at it, is cut too, even one that would apply.

Paths: `git apply` strips one folder from each name (-p1), right for `--- a/x` / `+++ b/x`
but not for `+++ tests/x.py`, which would create `x.py` at the top. A file's names without
the a/ b/ prefixes get them, so every diff is applied where it names, and its files are
read from the same names.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from nyxflow_engine.cut_off import is_cut_off

DIFF_LANGUAGES = ("diff", "patch")
DEV_NULL = "/dev/null"
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')  # a name as git quotes it
HUNK = re.compile(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
GIT_META = (
    "index ", "new file mode ", "deleted file mode ", "old mode ", "new mode ",
    "similarity index ", "dissimilarity index ", "rename from ", "rename to ", "copy from ",
    "copy to ",
)  # fmt: skip
# What each line of a diff is (see `_kinds`).
GIT, OLD, NEW, META, HUNK_HEADER, BODY, TEXT = "git", "old", "new", "meta", "hunk", "body", "text"


@dataclass(frozen=True)
class Proposed:
    diff: str
    cut: bool = False  # its block never closed: never applied, only reported


def diffs_in(text: str) -> list[Proposed]:
    """The diffs proposed, in order: one per fenced diff block (empty blocks mean "no
    change"), and the bare ones written outside any block or in a block without a language.
    The text is the fan-out's answers joined: one answer's bare diff beside another's block
    is read too, never dropped."""
    found: list[Proposed] = []
    opened: tuple[int, str] | None = None  # the open fence's length and language
    body: list[str] = []

    def close(cut: bool) -> None:
        if opened is None or not opened[1]:
            found.extend(_proposed(diff, cut_there) for diff, cut_there in _bare(body))
        elif opened[1] in DIFF_LANGUAGES and "".join(body).strip():
            found.append(_proposed("".join(body), cut))

    for line in text.splitlines(keepends=True):
        if opened is not None and is_cut_off(line):
            close(cut=True)  # its answer ends here, cut: what follows is the next answer's
            opened, body = None, []
            continue
        bare = line.rstrip("\r\n")
        ticks = len(bare) - len(bare.lstrip("`"))
        info = bare[ticks:].strip()
        if ticks < 3 or "`" in info or (opened is not None and ticks < opened[0]):
            body.append(line)  # not a fence (inline code, or a shorter run inside a block)
            continue
        close(cut=bool(info))  # an opening fence while a block is open: that one was cut off
        opened = None if opened is not None and not info else (ticks, _language(info))
        body = []
    close(cut=True)
    return found


def _bare(lines: Sequence[str]) -> list[tuple[str, bool]]:
    """The diffs among lines of prose, each with whether its answer was cut right after it:
    each from a file header (or a hunk) to the first line that is no part of a diff. A hunk
    is read as far as its counts say, so its empty context lines stay in it; blank lines
    before a further hunk are dropped, so that hunk stays with its file (taken alone, the
    first hunks would be accepted as the whole change)."""
    diffs: list[list[str]] = []
    cut: set[int] = set()
    within = gap = False  # inside a diff; after blank lines that may end it
    for line, kind in zip(lines, _kinds(lines), strict=True):
        if within and kind == TEXT and not line.strip():
            gap = True
        elif within and kind != TEXT and (not gap or kind == HUNK_HEADER):
            diffs[-1].append(line)
            gap = False
        elif kind in (GIT, OLD, HUNK_HEADER):
            diffs.append([line])  # a file header after blank lines: another answer's, maybe
            within, gap = True, False
        else:
            if within and is_cut_off(line):
                cut.add(len(diffs) - 1)
            within = False
    return [("".join(diff), i in cut) for i, diff in enumerate(diffs)]


def _language(info: str) -> str:
    return info.split()[0].lower() if info else ""


def _proposed(diff: str, cut: bool = False) -> Proposed:
    lines = diff.splitlines(keepends=True)
    for header in _headers(_kinds(lines)):
        header.prefix(lines)
    diff = "".join(lines)
    return Proposed(diff if diff.endswith("\n") else diff + "\n", cut)


def files_of(diff: str) -> list[str]:
    """The files a diff (as `diffs_in` gives it: a/ b/ names) changes, a renamed one by
    both names."""
    lines = diff.splitlines(keepends=True)
    found: set[str] = set()
    for header in _headers(_kinds(lines)):
        names = header.names(lines)
        found.update(_unquoted(name)[2:] for name in names if name != DEV_NULL)
    return sorted(found)


def in_crlf(diff: str, crlf: Collection[str]) -> str:
    """`diff` with the lines of its hunks in the files `crlf` names (as `files_of` does) ending
    in CRLF, as those files' lines do. A model reads such a file and writes its diff with
    LF endings: no context line matched, and every diff of a file committed from Windows was
    rejected. A context line that lost its leading space (an empty line) gets it back.

    A hunk's lines are read up to the next header, not counted by its `@@` line: this is
    tried when the diff did not apply as written, its counts maybe wrong (git's --recount)."""
    lines = diff.splitlines(keepends=True)
    current, in_hunk = "", False
    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.startswith("diff --git ") or (
            line.startswith("--- ") and following.startswith("+++ ")
        ):
            in_hunk = False
        if line.startswith(("--- ", "+++ ")) and not in_hunk:
            if (name := _name(line)) != DEV_NULL:
                current = _unquoted(name)[2:]
        elif HUNK.match(line):
            in_hunk = True
        elif in_hunk and current in crlf and line[:1] in ("\r", "\n", " ", "-", "+"):
            text = line.rstrip("\r\n") or " "
            lines[index] = f"{text}\r\n"
    return "".join(lines)


def _kinds(lines: Sequence[str]) -> list[str]:
    """Each line's part in a diff. A hunk's lines are counted down as its header says, as
    `git apply` does: a removed line "--- x" inside one is no file header."""
    kinds: list[str] = []
    old = new = 0  # lines of the current hunk still to come
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        tag = line[:1]
        if (old > 0 or new > 0) and tag in ("", " ", "-", "+", "\\"):
            old -= tag in ("", " ", "-")  # an empty line: a context line that lost its space
            new -= tag in ("", " ", "+")
            kinds.append(BODY)
            continue
        old = new = 0  # a hunk whose counts were wrong ends at its first other line
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if match := HUNK.match(line):
            old, new = _count(match.group(1)), _count(match.group(2))
            kinds.append(HUNK_HEADER)
        elif line.startswith("diff --git "):
            kinds.append(GIT)
        elif line.startswith("--- ") and following.startswith("+++ "):
            kinds.append(OLD)
        elif line.startswith("+++ ") and kinds[-1:] == [OLD]:
            kinds.append(NEW)
        elif line.startswith(GIT_META) and kinds[-1:] in ([GIT], [META]):
            kinds.append(META)
        else:
            kinds.append(TEXT)
    return kinds


def _count(group: str | None) -> int:
    return 1 if group is None else int(group)  # "@@ -3 +3 @@": one line


@dataclass
class _Header:
    """One file's names: its `diff --git` line, its --- line (+++ follows), or both."""

    git: int | None = None
    pair: int | None = None

    def takes(self, index: int, kinds: Sequence[str]) -> bool:
        """Whether the --- line at `index` is of the file this `diff --git` line names."""
        return (
            self.git is not None
            and self.pair is None
            and set(kinds[self.git + 1 : index]) <= {META}
        )

    def names(self, lines: Sequence[str]) -> list[str]:
        """Its ---/+++ names, or its `diff --git` ones (a mode change or a pure rename)."""
        if self.pair is not None:
            return [_name(lines[self.pair]), _name(lines[self.pair + 1])]
        return list(_git_names(lines[self.git])) if self.git is not None else []

    def prefix(self, lines: list[str]) -> None:
        """Every name to a/ (old) and b/ (new) form, unless all have it already: -p1 then
        strips what it should. Names by themselves would lose a folder each."""
        names = self.names(lines)
        if self.git is not None and self.pair is not None:
            names += _git_names(lines[self.git])
        if all(n == DEV_NULL or _unquoted(n).startswith(("a/", "b/")) for n in names):
            return
        if self.git is not None:
            old, new = _git_names(lines[self.git])
            ending = lines[self.git][len(lines[self.git].rstrip("\r\n")) :]
            lines[self.git] = f"diff --git {_with(old, 'a/')} {_with(new, 'b/')}{ending}"
        if self.pair is not None:
            for index, prefix in ((self.pair, "a/"), (self.pair + 1, "b/")):
                name = _name(lines[index])
                rest = lines[index][4 + len(name) :]  # a tab and a date, the line's end
                lines[index] = f"{lines[index][:4]}{_with(name, prefix)}{rest}"


def _headers(kinds: Sequence[str]) -> list[_Header]:
    headers: list[_Header] = []
    for index, kind in enumerate(kinds):
        if kind == GIT:
            headers.append(_Header(git=index))
        elif kind == OLD and headers and headers[-1].takes(index, kinds):
            headers[-1].pair = index
        elif kind == OLD:
            headers.append(_Header(pair=index))
    return headers


def _name(line: str) -> str:
    """A ---/+++ line's name: up to a tab (a date may follow it)."""
    return line[4:].rstrip("\r\n").split("\t", 1)[0].rstrip()


def _git_names(line: str) -> tuple[str, str]:
    """`diff --git <old> <new>`'s names; a name with spaces is quoted, or the same twice."""
    rest = line[len("diff --git ") :].rstrip("\r\n")
    if quoted := QUOTED.match(rest):
        return quoted.group(0), rest[quoted.end() :].lstrip()
    half = len(rest) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[:half] == rest[half + 1 :]:
        return rest[:half], rest[half + 1 :]
    if " b/" in rest:  # git's own form, spaces in its names or not
        old, _, new = rest.partition(" b/")
        return old, "b/" + new
    old, _, new = rest.partition(" ")
    return old, new


def _with(name: str, prefix: str) -> str:
    if name == DEV_NULL:
        return name
    return f'"{prefix}{name[1:]}' if name.startswith('"') else prefix + name


def _unquoted(name: str) -> str:
    """A name as git writes it when it holds unusual characters: "tests/\\303\\251.py"."""
    if len(name) < 2 or not (name.startswith('"') and name.endswith('"')):
        return name
    try:
        raw = codecs.escape_decode(name[1:-1].encode())[0]
    except ValueError:  # a bad escape ("a/src\\xml\\p.py", a trailing \\): git rejects that diff
        return name[1:-1]
    return raw.decode("utf-8", errors="replace")

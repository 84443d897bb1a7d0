"""The diffs in models' answers: fenced ```diff (or ```patch) blocks, whole ones only.

A fence is a line that starts with ``` at its first column; the block closes at a line of
only backticks (as many as opened it, or more). A diff never has such a line (each of its
lines starts with ' ', '+', '-', '@', '\\' or a header word), so a diff that changes a
markdown file's own fences is read whole. A fence that opens while a block is still open
means that block was cut off (an answer stopped at max_tokens, with the next answer after
it), as does the text's end: a cut block is reported, never applied. Half a diff that happens
to apply would otherwise be accepted as the whole change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIFF_LANGUAGES = ("diff", "patch")


@dataclass(frozen=True)
class Proposed:
    diff: str
    cut: bool = False  # its block never closed: never applied, only reported


def diffs_in(text: str) -> list[Proposed]:
    """The diffs proposed, one per fenced block; empty blocks mean "no change". Text
    without any fence is taken as one bare diff when it looks like one."""
    found: list[Proposed] = []
    opened: tuple[int, str] | None = None  # the open fence's length and language
    body: list[str] = []

    def close(cut: bool) -> None:
        if opened is not None and opened[1] in DIFF_LANGUAGES and "".join(body).strip():
            diff = "".join(body)
            found.append(Proposed(diff if diff.endswith("\n") else diff + "\n", cut))

    fenced = False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        ticks = len(bare) - len(bare.lstrip("`"))
        info = bare[ticks:].strip()
        if ticks < 3 or "`" in info or (opened is not None and ticks < opened[0]):
            body.append(line)  # not a fence (inline code, or a shorter run inside a block)
            continue
        fenced = True
        close(cut=bool(info))  # an opening fence while a block is open: that one was cut off
        opened = None if opened is not None and not info else (ticks, _language(info))
        body = []
    close(cut=True)
    if not fenced and ("\n+++ " in text or text.startswith("--- ")):
        found = [Proposed(text if text.endswith("\n") else text + "\n")]
    return found


def _language(info: str) -> str:
    return info.split()[0].lower() if info else ""


def files_of(diff: str) -> list[str]:
    return sorted(set(re.findall(r"^\+\+\+ b/(\S+)", diff, re.MULTILINE)))

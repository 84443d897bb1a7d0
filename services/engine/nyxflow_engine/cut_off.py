"""The line a fan-out's joined output holds after each item's answer that stopped at its token
limit. Items are joined without boundaries a reader could see, and a cut answer often reads
whole: a diff that stops between two hunks still applies. The line says where the cut is, to
a later step's model and to the review (tools/diffs.py), which never applies a diff before it."""

from __future__ import annotations

CUT_OFF = "[cut off here: this answer reached its token limit]"


def marked(text: str) -> str:
    """`text` with the line after it."""
    return f"{text}\n{CUT_OFF}" if text.endswith("\n") or not text else f"{text}\n\n{CUT_OFF}"


def is_cut_off(line: str) -> bool:
    return line.strip() == CUT_OFF

"""The line a fan-out's joined output holds after each item's answer that stopped at its token
limit. Items are joined without boundaries a reader could see, and a cut answer often reads
whole: a diff that stops between two hunks still applies. The line says where the cut is, to
a later step's model and to the review (tools/diffs.py), which never applies a diff before it.

A step's output cut at its limit is passed on to later steps so too: a reference to it in a
prompt, and the consistency check's review of it, carry the line after it (`Outputs`)."""

from __future__ import annotations

from collections.abc import Mapping

CUT_OFF = "[cut off here: this answer reached its token limit]"


def marked(text: str) -> str:
    """`text` with the line after it."""
    return f"{text}\n{CUT_OFF}" if text.endswith("\n") or not text else f"{text}\n\n{CUT_OFF}"


def is_cut_off(line: str) -> bool:
    return line.strip() == CUT_OFF


class Outputs(dict[str, str]):
    """Completed steps' outputs by name, each as its model wrote it (a fan-out splits its
    source from that), and the names of those that stopped at their token limit. What a later
    step is given of one is `passed_on`: marked, if cut."""

    def __init__(self) -> None:
        super().__init__()
        self.cut: set[str] = set()

    def put(self, name: str, output: str, cut: bool) -> None:
        """`cut`: the step's output stops at a limit where nothing in it says so. A fan-out's
        marks each cut item in its joined output already, and is not marked again."""
        self[name] = output
        if cut:
            self.cut.add(name)
        else:
            self.cut.discard(name)


def passed_on(outputs: Mapping[str, str], name: str) -> str:
    """Step `name`'s output as a later step's prompt quotes it: a cut one marked so."""
    text = outputs.get(name, "")
    return marked(text) if isinstance(outputs, Outputs) and name in outputs.cut else text

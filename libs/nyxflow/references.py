"""What a prompt may reference, one definition for runs (which refuses any other `{{ … }}` when a
workflow is created) and the engine (which renders them, once):

- `{{ steps.<name>.output }}`: an earlier step's output;
- `{{ item }}`: inside a fan-out, its item;
- `{{ "{{" }}`: a literal `{{`, for a prompt that quotes Vue, Jinja or Helm.

A step's name may hold any character but `{`, `}` and control characters ("Extend & Improve",
"Überblick", "Plan (v2)", "Step 1.5"), and is written in a reference as it is. The name is what
lies between `steps.` and the `.output` that closes the reference, so one ending in ".output"
reads right too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

# Every `{{ … }}` of a prompt; each must be one of REFERENCE's forms. Its blanks are stripped
# by the caller: a lazy body between two `\s*` read a long run of blanks once per character
# before it (a 1 MB prompt held the runs service for minutes).
EXPRESSION: Final = re.compile(r"\{\{([^}]*)\}\}")
REFERENCE: Final = re.compile(
    r"\{\{\s*(?:steps\.(?P<step>[^{}]+?)\.output|(?P<item>item)|(?P<open>\"\{\{\"))\s*\}\}"
)
OPEN: Final = "{{"  # what `{{ "{{" }}` renders as
NOT_IN_NAMES: Final = "{}"
# Nor a control character: C0 (newline, tab, NUL, ESC …), DEL, C1, and the Unicode line and
# paragraph separators. A name is one line, shown in lists, logs and terminals as it is.
CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROLS: Final = re.compile(f"(?:{CONTROL.pattern})+")


def name_problem(name: str) -> str | None:
    """Why a step's name could not be referenced, or None."""
    if any(c in name for c in NOT_IN_NAMES):
        return (
            'may hold any character but "{" and "}": a later prompt reads it as '
            "{{ steps.<name>.output }}"
        )
    return control_problem(name)


def control_problem(name: str) -> str | None:
    """Why a name (a step's, a workflow's) is not one line of text, or None."""
    if (found := CONTROL.search(name)) is not None:
        return f"must not hold control characters (newline, tab …): {found.group()!r} found"
    return None


def one_line(name: str) -> str:
    """A generated step's name as a name may be: each run of control characters a heading
    might carry (a tab, an ESC) one space."""
    return CONTROLS.sub(" ", name).strip()


def expressions(prompt: str) -> Iterator[re.Match[str]]:
    """EXPRESSION.finditer(prompt), in linear time. The regex alone tries every `{{` and reads
    on from each to the next `}`: a prompt of 30 KB of `{{` with no `}` took seconds, one of
    1 MB hours. Every `{{` before the same `}` ends there too, so that `}` is looked for once."""
    pos = 0
    while (start := prompt.find("{{", pos)) != -1:
        close = prompt.find("}", start + 2)
        if close == -1:
            return
        if prompt.startswith("}}", close) and (match := EXPRESSION.match(prompt, start)):
            yield match
            pos = match.end()
        else:
            pos = close + 1


def literal(text: str) -> str:
    """`text` written into a prompt template so that it renders as it is: each `{{` as
    `{{ "{{" }}`. For text of a user's put into a template (a refactor's goal): `{{ message }}`
    was refused as an unknown reference, `{{ steps.X.output }}` and `{{ item }}` replaced.
    The template must not put a `{` right after it (a trailing `{` would open one)."""
    return text.replace(OPEN, '{{ "{{" }}')


def step_names(prompt: str) -> set[str]:
    """The names of the steps whose output `prompt` reads."""
    return {m["step"].strip() for m in REFERENCE.finditer(prompt) if m["step"] is not None}

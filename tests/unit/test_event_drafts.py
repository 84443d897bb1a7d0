"""An event's data as the engine writes it: UTF-8 as it is (a CJK character 3 bytes, not the
6 of its JSON escape), NUL as U+FFFD as in the stored output, and a lone surrogate (which no
UTF-8 holds) as U+FFFD rather than a failed write."""

from __future__ import annotations

import json

import pytest

from nyxflow import events as ev
from nyxflow_engine.writer import draft


def text_of(data_json: str) -> str:
    value = json.loads(data_json)["text"]
    assert isinstance(value, str)
    return value


def test_non_ascii_text_is_not_escaped() -> None:
    text = "日本語 😀" * 1000
    made = draft(ev.STEP_DELTA, step_id="s", text=text)
    assert text_of(made.data_json) == text
    assert made.ByteSize() < len(text.encode()) + 100


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("a\x00b", "a\ufffdb"),
        ("\x00\x00", "\ufffd\ufffd"),
        ("a \\u0000 as text", "a \\u0000 as text"),  # a backslash, then "u0000"
        ("\\\x00", "\\\ufffd"),  # a backslash, then NUL
        ("\\\\u0000", "\\\\u0000"),
        ("a lone \ud83d half", "a lone \ufffd half"),
        ("\ud83d\ude00 paired", "😀 paired"),
    ],
)
def test_strings_hold_what_the_stored_output_would(text: str, kept: str) -> None:
    assert text_of(draft(ev.STEP_DELTA, step_id="s", text=text).data_json) == kept

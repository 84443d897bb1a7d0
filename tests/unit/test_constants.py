"""max_tokens defaults: one place, long-output steps get the long ceiling."""

from __future__ import annotations

import pytest

from nyxflow.constants import DEFAULT_MAX_TOKENS, LONG_OUTPUT_MAX_TOKENS, default_max_tokens


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("llm", "Summary", DEFAULT_MAX_TOKENS),
        ("consistency_check", "Check", DEFAULT_MAX_TOKENS),
        ("synthesis", "Synthesis", LONG_OUTPUT_MAX_TOKENS),
        ("implementation_prompt", "Prompt 1", LONG_OUTPUT_MAX_TOKENS),
        ("llm", "Extend & Improve", LONG_OUTPUT_MAX_TOKENS),
        ("llm", "improve the draft", LONG_OUTPUT_MAX_TOKENS),
    ],
)
def test_defaults_per_kind_and_long_output_steps(kind: str, name: str, expected: int) -> None:
    assert default_max_tokens(kind, name) == expected
    assert DEFAULT_MAX_TOKENS == 8192 and LONG_OUTPUT_MAX_TOKENS == 16384

"""Step kinds and their defaults, and limits both ends of a call keep, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from nyxflow.errors import InvalidArgument

LLM: Final = "llm"
FAN_OUT: Final = "fan_out"
SYNTHESIS: Final = "synthesis"
CONSISTENCY_CHECK: Final = "consistency_check"
IMPLEMENTATION_PROMPT: Final = "implementation_prompt"
TOOL: Final = "tool"

STEP_KINDS: Final = frozenset(
    {LLM, FAN_OUT, SYNTHESIS, CONSISTENCY_CHECK, IMPLEMENTATION_PROMPT, TOOL}
)

# Long-output kinds hit 8192 completion tokens in practice (the seeds' truncated steps).
LONG_OUTPUT_MAX_TOKENS: Final = 16384
DEFAULT_MAX_TOKENS: Final = 8192
MAX_TOKENS_BY_KIND: Final = {
    SYNTHESIS: LONG_OUTPUT_MAX_TOKENS,
    IMPLEMENTATION_PROMPT: LONG_OUTPUT_MAX_TOKENS,
}

DEFAULT_PROVIDER: Final = "local"
# Providers the engine knows; a chain entry is "name" or "name:model".
PROVIDERS: Final = ("local", "anthropic", "openai", "google", "openai_compatible")
MAX_CHAIN: Final = 8
# Tools a `tool` step may name: runs refuses others at creation; the engine's registry holds
# exactly these (tests/unit/test_tools_registry.py).
TOOLS: Final = ("echo", "scan_repository", "collect_findings", "review_patches")
# Steps a workflow holds, those a synthesis generates included: runs refuses more, and the
# engine fails a synthesis whose output would generate more before it is stored completed.
MAX_STEPS: Final = 500
# The most a `scan_repository` step's params may ask the scan to show the models (the
# pipeline route's bounds): runs refuses a workflow asking for more, naming the param, and the
# tool refuses it too (a workflow stored before). Unbounded, a hand-written workflow made the
# engine build (and hold) an output of hundreds of megabytes.
SCAN_MAXIMA: Final = {"max_files": 10_000, "max_bytes": 5_000_000, "max_file_bytes": 1_000_000}


def scan_limit(params: Mapping[str, Any], key: str, default: int, at: str = "params") -> int:
    """`params[key]` (one of SCAN_MAXIMA), `default` when absent: a whole number from 1 to its
    maximum, or refused with the field `<at>.<key>`."""
    value = params.get(key, default)
    high = SCAN_MAXIMA[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise InvalidArgument(f"must be a whole number from 1 to {high}", field=f"{at}.{key}")
    return value


# Steps that rewrite a whole earlier output ("Extend & Improve", "Improve", "Refactor") need
# the long ceiling whatever their kind: in the seeds they hit 8192/8192 exactly.
LONG_OUTPUT_WORDS: Final = ("improve", "extend", "rewrite", "refactor", "expand")


def default_max_tokens(kind: str, name: str = "") -> int:
    if any(word in name.lower() for word in LONG_OUTPUT_WORDS):
        return LONG_OUTPUT_MAX_TOKENS
    return MAX_TOKENS_BY_KIND.get(kind, DEFAULT_MAX_TOKENS)


# Batches per RecordMany call: runs refuses more, and the engine's committer sends no more.
MAX_RECORD_GROUP: Final = 1000

# What runs stores of a step's (or item's) served_by: every provider:model that made part of
# its text; the engine names fewer when they would not fit.
MAX_SERVED_BY: Final = 400

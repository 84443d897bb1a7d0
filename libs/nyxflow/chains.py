"""Provider chains (`["anthropic:claude-sonnet-4", "google"]`) as runs and the engine both
read them."""

from __future__ import annotations

from collections.abc import Sequence


def on_model(chain: Sequence[str], model: str) -> list[str]:
    """A default chain serving a step's own model: its first entry's model is a default, the
    step's was named for it (none: the chain as it is; the fallbacks keep theirs)."""
    if not chain or not model:
        return list(chain)
    return [f"{chain[0].partition(':')[0]}:{model}", *chain[1:]]

"""What a step records as having served it when several providers made parts of its text."""

from __future__ import annotations

from nyxflow.constants import MAX_SERVED_BY
from nyxflow_engine.providers.base import served_by_all


def test_each_provider_is_named_once_in_the_order_it_served() -> None:
    entries = ["openai:gpt-4.1", "", "anthropic:claude", "openai:gpt-4.1"]
    assert served_by_all(entries) == "openai:gpt-4.1, anthropic:claude"


def test_past_what_runs_stores_the_one_that_finished_the_text_is_named() -> None:
    """runs refuses a served_by longer than it stores: the step's completion was refused."""
    entries = [f"p{i}:{'m' * 150}" for i in range(3)]
    named = served_by_all(entries)
    assert named == entries[-1]
    assert served_by_all(entries[:2]) == ", ".join(entries[:2])
    assert len(", ".join(entries)) > MAX_SERVED_BY


def test_a_provider_named_by_several_entries_is_named_once() -> None:
    """A fan-out item continued further down the chain names two already."""
    entries = ["openai:gpt-4.1", "openai:gpt-4.1, anthropic:claude", "anthropic:claude"]
    assert served_by_all(entries) == "openai:gpt-4.1, anthropic:claude"


def test_nothing_served_names_nothing() -> None:
    assert served_by_all(["", ""]) == ""

"""The steps a synthesis generates take its model with its chain, and the consistency check
gives the model only to the entry the synthesis ran it on, never to the workflow's fallbacks."""

from __future__ import annotations

import pytest

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.steps.generation import generated_specs

PLAN = "## One\nDo one.\n## Two\nDo two.\n"


def synthesis(providers: list[str], model: str) -> pb.Step:
    return pb.Step(
        id="syn", name="Synthesis", kind="synthesis", output=PLAN, providers=providers, model=model
    )


@pytest.mark.parametrize(
    ("providers", "defaults", "check_chain", "check_model"),
    [
        # The check's chain begins with the synthesis's: the model serves that entry again.
        (["local"], ["google", "anthropic"], ["local", "google", "anthropic"], "big-model"),
        (["google"], ["google", "anthropic"], ["google", "anthropic"], "big-model"),
        # The synthesis ran on the engine's default chain, the check would lead with the
        # workflow's: the model was not that entry's.
        ([], ["google"], ["google"], ""),
        # Both on the engine's default: the same first entry.
        ([], [], [], "big-model"),
    ],
)
def test_the_model_goes_with_the_entry_it_served(
    providers: list[str], defaults: list[str], check_chain: list[str], check_model: str
) -> None:
    step = synthesis(providers, "big-model")
    specs = generated_specs(step, [step], consistency_check=True, default_chain=defaults)
    *prompts, check = specs
    assert len(prompts) == 2
    assert all((list(s.providers), s.model) == (providers, "big-model") for s in prompts)
    assert (list(check.providers), check.model) == (check_chain, check_model)

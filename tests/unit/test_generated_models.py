"""The steps a synthesis generates take its model with its chain, the consistency check too."""

from __future__ import annotations

import pytest

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.steps.generation import generated_specs

PLAN = "## One\nDo one.\n## Two\nDo two.\n"


def synthesis(providers: list[str], model: str) -> pb.Step:
    return pb.Step(
        id="syn", name="Synthesis", kind="synthesis", output=PLAN, providers=providers, model=model
    )


@pytest.mark.parametrize("providers", [["local"], ["google", "anthropic"], []])
def test_the_generated_steps_take_the_synthesis_s_chain_and_model(providers: list[str]) -> None:
    """The check's fallbacks after that chain (the workflow's or the tenant's) are runs' to add
    (tests/integration/test_providers.py): the model stays with the chain's first entry."""
    step = synthesis(providers, "big-model")
    specs = generated_specs(step, [step], consistency_check=True)
    *prompts, check = specs
    assert len(prompts) == 2 and check.kind == "consistency_check"
    assert all((list(s.providers), s.model) == (providers, "big-model") for s in specs)

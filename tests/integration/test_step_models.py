"""A step's model and its provider chain go together: the model serves the chain's first entry
where that names none. A retry that changes one must not leave the other pointing elsewhere
(the seeds' workaround, switching a step off Anthropic, asked Google for a Claude model), and
the steps a synthesis generates run on the model it ran on."""

from __future__ import annotations

from typing import Any

import pytest

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.providers.google_gemini import DEFAULT_MODEL as GEMINI_DEFAULT
from tests.integration.test_workflow_semantics import execute, run_once, spec
from tests.support.fake_providers import FakeProviders, Reply
from tests.support.inprocess import Clients
from tests.support.provider_runs import of_type


async def run_retried(api: Clients, run_id: str) -> tuple[pb.Run, list[pb.RunEvent]]:
    events = await execute(api, run_id)
    return await api.runs.get_run(run_id), events


def changed(events: list[pb.RunEvent]) -> dict[str, Any]:
    marks = of_type(events, ev.STEP_RETRIED)
    assert len(marks) == 1, marks
    return dict(marks[0].get("changed", {}))


async def test_a_retry_onto_another_provider_drops_the_old_providers_model(
    fake_api: Clients, fake: FakeProviders
) -> None:
    """The seeds' post 003: out of Anthropic credit, the step is retried on Google."""
    fake.script("anthropic", Reply(error="credit"))
    workflow = await fake_api.runs.create_workflow(
        "off-anthropic",
        [spec("Synthesis", provider="anthropic", model="claude-sonnet-4")],
    )
    first, _ = await run_once(fake_api, workflow.id)
    assert first.status == ev.FAILED

    fake.script("google", Reply(text="Gemini served this."))
    retried = await fake_api.runs.retry_step(first.steps[0].id, providers=["google"])
    run, events = await run_retried(fake_api, retried.id)
    step = run.steps[0]
    assert run.status == ev.COMPLETED, run.error
    assert step.served_by == f"google:{GEMINI_DEFAULT}"
    asked = [r.path for r in fake.requests if r.provider == "google"]
    assert asked and all("claude" not in path for path in asked), asked
    assert (step.model, list(step.providers)) == ("", ["google"])
    assert changed(events) == {"providers": ["google"], "model": ""}


async def test_a_retry_onto_another_chain_with_a_model_runs_on_that_model(api: Clients) -> None:
    workflow = await api.runs.create_workflow(
        "chain-and-model", [spec("one", provider="local", model="model-a")]
    )
    first, _ = await run_once(api, workflow.id)
    assert first.steps[0].served_by == "local:model-a"

    retried = await api.runs.retry_step(
        first.steps[0].id, providers=["local", "anthropic"], model="model-b"
    )
    run, events = await run_retried(api, retried.id)
    assert run.steps[0].served_by == "local:model-b"
    assert changed(events) == {"providers": ["local", "anthropic"], "model": "model-b"}


async def test_a_retry_with_a_model_runs_on_it_where_the_chain_named_another(
    api: Clients,
) -> None:
    """The first entry's model would win over the step's: the edit goes into the entry, and
    the fallback keeps its own model."""
    workflow = await api.runs.create_workflow(
        "entry-model", [spec("one", providers=["local:model-a", "local:model-c"])]
    )
    first, _ = await run_once(api, workflow.id)
    assert first.steps[0].served_by == "local:model-a"

    retried = await api.runs.retry_step(first.steps[0].id, model="model-b")
    run, events = await run_retried(api, retried.id)
    step = run.steps[0]
    assert step.served_by == "local:model-b"
    assert (step.model, list(step.providers)) == ("model-b", ["local:model-b", "local:model-c"])
    assert changed(events) == {"model": "model-b", "providers": ["local:model-b", "local:model-c"]}


async def test_a_retry_with_a_model_runs_on_it_over_the_workflows_chain(api: Clients) -> None:
    """A step naming no chain runs on the workflow's, whose first entry serves the step's own
    model: the step keeps following the workflow's chain."""
    workflow = await api.runs.create_workflow(
        "workflow-chain", [spec("one")], default_providers=["local:model-a", "anthropic"]
    )
    first, _ = await run_once(api, workflow.id)
    assert first.steps[0].served_by == "local:model-a"

    retried = await api.runs.retry_step(first.steps[0].id, model="model-b")
    run, events = await run_retried(api, retried.id)
    assert run.steps[0].served_by == "local:model-b"
    assert changed(events) == {"model": "model-b"}
    assert list(run.steps[0].providers) == ["local:model-b", "anthropic"]


async def test_a_step_model_is_served_by_its_workflows_chain_from_the_start(
    api: Clients,
) -> None:
    """Named when the workflow was made, it was ignored for the chain's own first model."""
    workflow = await api.runs.create_workflow(
        "workflow-chain-model",
        [spec("one", model="model-b"), spec("two")],
        default_providers=["local:model-a", "anthropic"],
    )
    run, _ = await run_once(api, workflow.id)
    assert [s.served_by for s in run.steps] == ["local:model-b", "local:model-a"]


async def test_a_step_naming_two_models_for_its_first_provider_is_refused(api: Clients) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await api.runs.create_workflow(
            "two-models-at-once", [spec("one", providers=["local:model-a"], model="model-b")]
        )
    assert refused.value.field == "steps[0].model"


@pytest.mark.parametrize("chain", [["local:model-a"]])
async def test_a_retry_naming_two_models_for_one_entry_is_refused(
    api: Clients, chain: list[str]
) -> None:
    """The chain given names a model in its first entry, and the edit another: which one was
    meant is not guessed. (An empty one, the workflow's chain, serves the step's model.)"""
    workflow = await api.runs.create_workflow(
        "two-models", [spec("one", providers=["local"])], default_providers=["local:model-a"]
    )
    first, _ = await run_once(api, workflow.id)
    with pytest.raises(InvalidArgument) as refused:
        await api.runs.retry_step(first.steps[0].id, providers=chain, model="model-b")
    assert refused.value.field == "model"
    assert "local:model-a" in str(refused.value) and "model-b" in str(refused.value)
    after = await api.runs.get_workflow(workflow.id)
    assert after.last_run_id == first.id  # no run queued
    assert (after.steps[0].model, list(after.steps[0].providers)) == ("", ["local"])


@pytest.mark.parametrize("consistency_check", [False, True])
async def test_generated_steps_run_on_the_synthesis_model(
    api: Clients, consistency_check: bool
) -> None:
    """The implementation prompts take the synthesis's chain and model; so does the check,
    whose chain goes on with the workflow's, the model staying with the first entry."""
    workflow = await api.runs.create_workflow(
        "generated-model",
        [
            spec("Outline", params={"items": 2, "tokens": 20}),
            spec(
                "Synthesis",
                "synthesis",
                "Combine: {{ steps.Outline.output }}",
                generates="implementation_prompt",
                providers=["local"],
                model="big-model",
                params={"items": 2, "tokens": 20},
            ),
        ],
        consistency_check,
        default_providers=["local:small-model"],
    )
    run, _ = await run_once(api, workflow.id)
    assert run.status == ev.COMPLETED, run.error
    synthesis = run.steps[1]
    generated = [s for s in run.steps if s.auto_generated]
    assert synthesis.served_by == "local:big-model"
    assert len(generated) == 2 + consistency_check
    assert [s.served_by for s in generated] == ["local:big-model"] * len(generated)
    if consistency_check:
        assert list(generated[-1].providers) == ["local", "local:small-model"]

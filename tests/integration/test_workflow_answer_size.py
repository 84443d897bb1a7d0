"""A workflow whose answer could not be sent is refused before anything is stored: CreateWorkflow
answers with each step's prompt twice (the step's and its spec's) and its persona's prompt, and
a 20 MB prompt, taken within the message limit, was committed before the answer outgrew it. The
client saw RESOURCE_EXHAUSTED, and each retry stored another copy."""

from __future__ import annotations

import re

import pytest

from nyxflow.errors import ResourceExhausted
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import common_pb2 as pb
from tests.support.inprocess import Clients
from tests.support.workflows import llm_step

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

MAX_MESSAGE = int(dict(CHANNEL_OPTIONS)["grpc.max_send_message_length"])
MB = 1_000_000


async def refused(runs: Clients, steps: list[pb.StepSpec]) -> ResourceExhausted:
    """The refusal of a workflow of these steps, after which the tenant has no workflow."""
    with pytest.raises(ResourceExhausted) as raised:
        await runs.runs.create_workflow("too big", steps)
    assert await runs.runs.list_workflows() == []
    return raised.value


async def test_a_prompt_whose_answer_outgrows_a_message_is_refused_and_not_stored(
    runs: Clients,
) -> None:
    error = await refused(runs, [llm_step("s0", "x" * (20 * MB))])
    assert error.field == "steps[0].prompt"
    assert str(MAX_MESSAGE) in error.message


async def test_prompts_that_outgrow_it_together_name_the_step_that_overflows(
    runs: Clients,
) -> None:
    steps = [llm_step(f"s{i}", "x" * (6 * MB)) for i in range(3)]
    assert (await refused(runs, steps)).field == "steps[2].prompt"


async def test_a_persona_repeated_on_every_step_counts_in_the_answer(runs: Clients) -> None:
    """The request is small; the answer carries the persona's prompt once per step."""
    await runs.runs.put_persona(pb.Persona(name="verbose", system_prompt="v" * (900_000)))
    steps = [
        pb.StepSpec(name=f"s{i}", kind="llm", prompt="hi", persona="verbose") for i in range(40)
    ]
    error = await refused(runs, steps)
    assert re.fullmatch(r"steps\[3\d\]\.persona", error.field or ""), error.field


async def test_a_prompt_whose_answer_fits_is_stored_and_read_whole(runs: Clients) -> None:
    prompt = "y" * (MAX_MESSAGE // 2 - 64 * 1024)
    created = await runs.runs.create_workflow("just fits", [llm_step("s0", prompt)])
    assert created.steps[0].prompt == prompt
    assert [w.id for w in await runs.runs.list_workflows()] == [created.id]
    whole = await runs.runs.get_workflow(created.id)
    assert whole.steps[0].prompt == whole.steps[0].spec.prompt == prompt

"""The README's example workflow, as written there, runs to the end on the offline provider:
as first written, it failed at its second step (no headings to split)."""

from __future__ import annotations

import re
from pathlib import Path

from nyxflow import events as ev
from nyxflow.templates import parse_template
from tests.support.inprocess import Clients

README = Path(__file__).parents[2] / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)


def example() -> str:
    (plan,) = [block for block in blocks() if block.startswith("name: Plan the release")]
    return str(plan)


async def test_every_readme_workflow_creates_as_printed(api: Clients) -> None:
    """The provider-chain example had no `name`: copied into a file, it was refused."""
    assert len(blocks()) >= 2
    for block in blocks():
        workflow = await api.runs.create_workflow_from(parse_template(block).to_request())
        assert workflow.name and workflow.steps, block


async def test_the_readme_example_workflow_completes(api: Clients) -> None:
    assert api.engine is not None
    workflow = await api.runs.create_workflow_from(parse_template(example()).to_request())
    run = await api.runs.create_run(workflow.id)
    events = [e async for e in api.engine.execute(run.id)]

    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, (done.error, events[-1].data_json)
    names = [s.name for s in done.steps]
    assert names[:3] == ["Outline", "Detail", "Synthesis"]
    assert len([n for n in names if n.startswith("Implementation prompt")]) == 3
    assert names[-1].lower().startswith("consistency")
    assert all(s.status == ev.COMPLETED and s.output for s in done.steps)

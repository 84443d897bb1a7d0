"""Operations on a code pipeline's workflow: a retried or resumed run shows what its carried
steps saved; a test command is checked when the pipeline starts, not after the models ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument
from tests.integration.test_pipelines import execute, start
from tests.support.inprocess import Clients
from tests.support.repos import planted_repo


async def test_a_retried_report_keeps_the_findings_of_the_steps_it_did_not_run(
    api: Clients, tmp_path: Path
) -> None:
    repo = planted_repo(tmp_path)
    first = await start(api, repo, "code-analysis")
    await execute(api, first.id)
    (finding,) = await api.runs.list_findings(first.id)
    report = (await api.runs.get_run(first.id)).steps[-1]

    again = await api.runs.retry_step(report.id)  # the report was cut at max_tokens, say
    await execute(api, again.id)

    assert (await api.runs.get_run(again.id)).status == ev.COMPLETED
    assert await api.runs.list_findings(again.id) == [finding]
    assert await api.runs.list_findings(first.id) == [finding]  # the first run's stay its own


async def test_a_rerun_carries_nothing(api: Clients, tmp_path: Path) -> None:
    """Every step runs again: nothing of the last run's is the new one's before it does."""
    repo = planted_repo(tmp_path)
    first = await start(api, repo, "code-analysis")
    await execute(api, first.id)

    second = await api.runs.rerun_workflow(first.workflow_id)

    assert await api.runs.list_findings(second.id) == []
    assert len(await api.runs.list_findings(first.id)) == 1


async def test_a_retried_step_leaves_the_artifacts_of_the_others_with_the_new_run(
    api: Clients, tmp_path: Path
) -> None:
    repo = planted_repo(tmp_path)
    first = await start(api, repo, "auto-fix")
    await execute(api, first.id)
    patch = await api.runs.get_artifact(first.id, "patch")
    scan = (await api.runs.get_run(first.id)).steps[0]

    again = await api.runs.retry_step(scan.id)  # Review stays completed: it does not run

    carried = await api.runs.get_artifact(again.id, "patch")
    assert (carried.content, carried.step_id) == (patch.content, patch.step_id)
    await execute(api, again.id)
    assert (await api.runs.get_artifact(again.id, "patch")).content == patch.content


async def test_a_test_command_that_cannot_be_split_is_refused_at_the_start(
    api: Clients, tmp_path: Path
) -> None:
    repo = planted_repo(tmp_path)
    with pytest.raises(InvalidArgument, match="No closing quotation") as refused:
        await start(api, repo, "auto-fix", test_command="pytest -k 'add")
    assert refused.value.field == "test_command"
    assert await api.runs.list_runs() == []


async def test_a_blank_test_command_is_no_test_command(api: Clients, tmp_path: Path) -> None:
    """It was kept as given: split into nothing, every patch was rejected, its tests "failed"."""
    repo = planted_repo(tmp_path)
    run = await start(api, repo, "auto-fix", test_command="  \t ")
    await execute(api, run.id)

    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    review = json.loads((await api.runs.get_artifact(run.id, "review")).content)
    assert review["test_command"] is None
    assert [a["files"] for a in review["accepted"]] == [["calc.py"]]
    assert not any(r["reason"].startswith("tests failed") for r in review["rejected"])


async def test_a_repository_path_is_stored_as_every_tool_reads_it(
    api: Clients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`~` expanded and `..` resolved when added: the scan expanded `~` but the review did
    not, so a run scanned the repository and then failed at its review. A relative path is
    refused: relative to the services' folder, it would name another repository."""
    project = await api.runs.create_project("paths")
    home = str(Path.home())
    tilde = await api.runs.add_repository(project.id, "acme", "tilde", "~/src/../shop")
    assert tilde.path == f"{home}/shop"
    dotted = await api.runs.add_repository(project.id, "acme", "dots", f"{tmp_path}/a/./../shop/")
    assert dotted.path == f"{tmp_path}/shop"
    with pytest.raises(InvalidArgument, match="absolute") as refused:
        await api.runs.add_repository(project.id, "acme", "relative", "shop")
    assert refused.value.field == "path"

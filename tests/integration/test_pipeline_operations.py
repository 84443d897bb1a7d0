"""Operations on a code pipeline's workflow: a retried or resumed run shows what its carried
steps saved; a test command is checked when the pipeline starts, not after the models ran;
a repository is where its tenant may read it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, EngineClient, open_channel
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.models import Step
from tests.integration.test_pipelines import execute, start
from tests.support.databases import fresh_database
from tests.support.inprocess import (
    ADMIN_KEY,
    Clients,
    clients,
    engine_service,
    runs_service,
)
from tests.support.repos import CALC, git, planted_repo
from tests.support.workflows import llm_step


async def finished(api: Clients, tmp_path: Path, pipeline: str) -> pb.Run:
    """A pipeline run to its end over a planted repository."""
    run = await start(api, planted_repo(tmp_path), pipeline)
    await execute(api, run.id)
    return run


async def test_a_retried_report_keeps_the_findings_of_the_steps_it_did_not_run(
    api: Clients, tmp_path: Path
) -> None:
    first = await finished(api, tmp_path, "code-analysis")
    (finding,) = await api.runs.list_findings(first.id)
    report = (await api.runs.get_run(first.id)).steps[-1]

    again = await api.runs.retry_step(report.id)  # the report was cut at max_tokens, say
    await execute(api, again.id)

    assert (await api.runs.get_run(again.id)).status == ev.COMPLETED
    assert await api.runs.list_findings(again.id) == [finding]
    assert await api.runs.list_findings(first.id) == [finding]  # the first run's stay its own


async def test_a_rerun_carries_nothing(api: Clients, tmp_path: Path) -> None:
    """Every step runs again: nothing of the last run's is the new one's before it does."""
    first = await finished(api, tmp_path, "code-analysis")

    second = await api.runs.rerun_workflow(first.workflow_id)

    assert await api.runs.list_findings(second.id) == []
    assert len(await api.runs.list_findings(first.id)) == 1


async def test_a_retried_step_leaves_the_artifacts_of_the_others_with_the_new_run(
    api: Clients, tmp_path: Path
) -> None:
    first = await finished(api, tmp_path, "auto-fix")
    patch = await api.runs.get_artifact(first.id, "patch")
    scan = (await api.runs.get_run(first.id)).steps[0]

    again = await api.runs.retry_step(scan.id)  # Review stays completed: it does not run

    carried = await api.runs.get_artifact(again.id, "patch")
    assert (carried.content, carried.step_id) == (patch.content, patch.step_id)
    await execute(api, again.id)
    assert (await api.runs.get_artifact(again.id, "patch")).content == patch.content


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"max_tokens": 64}, "max_tokens"),
        ({"auto_continue": 1}, "auto_continue"),
        ({"model": "bigger"}, "model"),
        ({"providers": ["local"]}, "providers"),
    ],
)
async def test_a_tool_step_is_not_retried_with_a_model_setting(
    api: Clients, tmp_path: Path, edit: dict[str, object], field: str
) -> None:
    """A tool step calls no model: the setting would be stored and never read."""
    first = await finished(api, tmp_path, "code-analysis")
    scan = (await api.runs.get_run(first.id)).steps[0]
    assert scan.spec.kind == "tool"

    with pytest.raises(InvalidArgument) as refused:
        await api.runs.retry_step(scan.id, **edit)  # type: ignore[arg-type]

    assert refused.value.field == field
    assert (await api.runs.get_run(first.id)).status == ev.COMPLETED  # no run was queued
    runs = await api.runs.list_runs(first.workflow_id)
    assert [r.id for r in runs] == [first.id]


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


async def test_with_a_repos_root_a_tenant_reads_only_its_own_folder(tmp_path: Path) -> None:
    """NYXFLOW_REPOS_ROOT: each tenant's repositories under <root>/<tenant id>/ only; any
    other path was taken, so one tenant could have another's source sent to its models."""
    root = tmp_path / "repos"
    async with (
        fresh_database("sqlite", tmp_path) as url,
        runs_service(url, repos_root=str(root)) as runs_settings,
        engine_service(runs_settings.runs_listen, repos_root=str(root)) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
    ):
        probe = await api.runs.create_workflow("probe", [llm_step("s")])
        tenant_id = (await api.runs.create_run(probe.id)).tenant_id
        (root / tenant_id).mkdir(parents=True)
        (root / "other").mkdir()
        planted_repo(root / tenant_id)
        theirs = planted_repo(root / "other")
        project = await api.runs.create_project("walls")

        own = await api.runs.add_repository(project.id, "mine", "shop", "shop")
        assert own.path == str(root / tenant_id / "shop")
        with pytest.raises(InvalidArgument, match="inside this tenant's folder") as refused:
            await api.runs.add_repository(project.id, "other", "shop", str(theirs))
        assert refused.value.field == "path"
        run = await start(api, root / tenant_id / "shop", "code-analysis")
        await execute(api, run.id)
        assert (await api.runs.get_run(run.id)).status == ev.COMPLETED

        # A workflow of its own naming the tool and the other tenant's folder: the engine checks
        # again, on the folder it would read.
        for path, said in ((str(theirs), "inside this tenant's folder"), ("shop/sub", "")):
            (root / tenant_id / "shop" / "sub").mkdir(exist_ok=True)
            scan = pb.StepSpec(
                name="Scan",
                kind="tool",
                tool="scan_repository",
                params_json=json.dumps({"path": path}),
            )
            workflow = await api.runs.create_workflow(f"scan {path}", [scan])
            failed = await api.runs.create_run(workflow.id)
            await execute(api, failed.id)
            done = await api.runs.get_run(failed.id)
            assert done.status == ev.FAILED
            assert (said or "give its top folder") in done.steps[0].error, done.steps[0].error


async def test_a_new_run_of_a_pipeline_carries_what_its_completed_steps_saved(
    api: Clients, tmp_path: Path, database_url: str
) -> None:
    """A new run (not a retry) of a pipeline whose report failed runs only what is not
    completed, as a resume does: its findings were the first run's, and it listed none."""
    first = await finished(api, tmp_path, "code-analysis")
    (finding,) = await api.runs.list_findings(first.id)
    report = (await api.runs.get_run(first.id)).steps[-1]
    db = create_async_engine(database_url)
    try:
        async with db.begin() as connection:  # as if the report had failed
            await connection.execute(
                update(Step).where(Step.id == report.id).values(status=ev.FAILED)
            )
    finally:
        await db.dispose()

    again = await api.runs.create_run(first.workflow_id)
    await execute(api, again.id)

    assert (await api.runs.get_run(again.id)).status == ev.COMPLETED
    assert await api.runs.list_findings(again.id) == [finding]


async def test_a_moved_project_takes_its_paths_into_the_new_tenants_folder(
    database_url: str, tmp_path: Path
) -> None:
    """Under a repositories' root, a project moved to another tenant kept its paths in the old
    tenant's folder, so every pipeline of it was refused after the move. Its repositories'
    paths and its tool steps' are re-rooted, and the report says which folders to move."""
    root = tmp_path / "repos"
    async with (
        runs_service(database_url, repos_root=str(root)) as runs_settings,
        engine_service(runs_settings.runs_listen, repos_root=str(root)) as engine_settings,
        clients(runs_settings.runs_listen, engine_settings.engine_listen) as api,
        open_channel(engine_settings.engine_listen) as engine_channel,
    ):
        admin = AdminClient(api.runs_channel, bearer_metadata(ADMIN_KEY))
        b = await admin.create_tenant("team-b", "Team B")
        b_key = (await admin.create_api_key("team-b", "ci")).secret
        probe = await api.runs.create_workflow("probe", [llm_step("s")])
        a_id = (await api.runs.create_run(probe.id)).tenant_id
        old, new = root / a_id / "shop", root / b.id / "shop"
        (root / a_id).mkdir(parents=True)
        planted_repo(root / a_id)
        first = await start(api, old, "code-analysis")
        await execute(api, first.id)
        workflow = await api.runs.get_workflow(first.workflow_id)

        dry = await admin.move_project(workflow.project_id, "team-b", dry_run=True)
        moved = await admin.move_project(workflow.project_id, "team-b")

        said = [(p.kind, p.from_path, p.to_path) for p in moved.paths]
        assert ("repository", str(old), str(new)) in said
        assert ("step", str(old), str(new)) in said  # the scan's, and the review's if any
        assert list(dry.paths) == list(moved.paths) and not dry.moved
        b_runs = api.as_key(b_key)
        (repository,) = (await b_runs.get_project(workflow.project_id)).repositories
        assert repository.path == str(new)

        new.parent.mkdir()
        shutil.move(old, new)  # the operator moves the folder, as the report asks
        again = await b_runs.rerun_workflow(workflow.id)
        assert [
            e async for e in EngineClient(engine_channel, bearer_metadata(b_key)).execute(again.id)
        ]
        done = await b_runs.get_run(again.id)
        assert done.status == ev.COMPLETED, [s.error for s in done.steps]
        assert json.loads(done.steps[0].output)["files"] == 3


@pytest.mark.parametrize("pipeline", ["auto-fix", "refactor", "code-analysis"])
async def test_a_repository_without_commits_is_refused_at_the_scan_when_a_review_follows(
    api: Clients, tmp_path: Path, pipeline: str
) -> None:
    """The review patches HEAD, which a repository without commits lacks: the run failed at
    the review, after every Improve call was made (and paid for). The scan refuses it now;
    an analysis, which patches nothing, still reads its staged files."""
    repo = tmp_path / "fresh"
    repo.mkdir()
    (repo / "calc.py").write_text(CALC)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    run = await start(api, repo, pipeline, goal="tidy")

    await execute(api, run.id)

    done = await api.runs.get_run(run.id)
    if pipeline == "code-analysis":
        assert done.status == ev.COMPLETED, done.error
        return
    scan, improve, review = done.steps
    assert done.status == ev.FAILED and scan.status == ev.FAILED
    assert "has no commits yet" in scan.error and "'Review'" in scan.error, scan.error
    assert improve.status == ev.PENDING and improve.output_tokens == 0
    assert review.status == ev.PENDING

"""Code pipelines on a real git repository: findings stored, a patch that applies, a broken
diff rejected with its reason, the user's work tree untouched, re-runs keeping artifacts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nyxflow import events as ev
from nyxflow import pipelines
from nyxflow.errors import FailedPrecondition, InvalidArgument, NotFound
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.templating import render
from nyxflow_runs.validation import step_drafts
from tests.support.inprocess import Clients
from tests.support.repos import CALC, TEST_COMMAND, git, model_replies, planted_repo

MANY_FILES = 3_000


async def start(api: Clients, repo: Path, pipeline: str, **fields: object) -> pb.Run:
    project = await api.runs.create_project(f"p-{pipeline}")
    repository = await api.runs.add_repository(project.id, "acme", "shop", str(repo))
    params = {"replies": model_replies(), "script": "[]" if pipeline == "code-analysis" else ""}
    request = runs_pb2.StartPipelineRequest(
        repository_id=repository.id,
        pipeline=pipeline,
        params_json=json.dumps({**params, "tokens": 4}),
        **fields,  # type: ignore[arg-type]
    )
    return await api.runs.start_pipeline(request)


async def execute(api: Clients, run_id: str) -> list[pb.RunEvent]:
    assert api.engine is not None
    return [e async for e in api.engine.execute(run_id)]


def phases(events: list[pb.RunEvent]) -> list[str]:
    started = [json.loads(e.data_json) for e in events if e.type == ev.STEP_STARTED]
    return [s.get("phase", "") for s in started]


async def test_code_analysis_stores_findings_and_reports(api: Clients, tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    run = await start(api, repo, "code-analysis")
    assert run.phase == "scanning" and run.status == ev.PENDING

    events = await execute(api, run.id)

    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    assert phases(events) == ["scanning", "analyzing", "reporting", "reporting", "reporting"]
    assert done.phase == "reporting"
    scan = json.loads(done.steps[0].output)
    assert scan["files"] == 3 and scan["left_out"]["files"] == 0
    (finding,) = await api.runs.list_findings(run.id)
    assert (finding.file, finding.line, finding.severity) == ("calc.py", 2, "high")
    assert "subtracts" in finding.message


async def test_the_report_is_given_the_scan_in_brief_whatever_the_repository_s_size(
    api: Clients, tmp_path: Path
) -> None:
    """The report's prompt held the whole scan: every file listed and the sampled contents
    again. 12,000 files made it about 300,000 tokens, more than a model takes."""
    repo = planted_repo(tmp_path)
    for i in range(MANY_FILES):
        folder = repo / f"pkg{i // 50:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"m{i:04d}.py").write_text(f"VALUE = {i}  # sampled content\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "many")
    run = await start(api, repo, "code-analysis")

    await execute(api, run.id)

    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    steps = {step.name: step for step in done.steps}
    assert steps["Report"].input_tokens < 2_000  # words: whatever the repository's size
    overview = json.loads(steps["Overview"].output)
    assert overview["files"] == MANY_FILES + 3 and overview["folders"]["count"] == 61
    assert overview["sampled"]["files"] == 40 and overview["left_out"]["files"] == MANY_FILES - 37
    assert "sampled content" not in steps["Overview"].output


async def test_auto_fix_patch_applies_and_a_broken_diff_is_rejected(
    api: Clients, tmp_path: Path
) -> None:
    repo = planted_repo(tmp_path)
    run = await start(api, repo, "auto-fix", test_command=TEST_COMMAND)
    events = await execute(api, run.id)

    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    assert phases(events) == ["scanning", "improving", "reviewing"]
    patch = await api.runs.get_artifact(run.id, "patch")
    assert patch.media_type == "text/x-diff" and "+    return a + b" in patch.content
    checked = subprocess.run(
        ["git", "-C", str(repo), "apply", "--check", "-"], input=patch.content, text=True
    )
    assert checked.returncode == 0  # applies cleanly to HEAD
    review = json.loads((await api.runs.get_artifact(run.id, "review")).content)
    assert [a["files"] for a in review["accepted"]] == [["calc.py"]]
    (rejected,) = review["rejected"]
    assert rejected["files"] == ["util.py"] and rejected["reason"].startswith("does not apply")
    # Never applied to the user's work tree.
    assert (repo / "calc.py").read_text() == CALC
    assert git(repo, "status", "--porcelain") == ""


async def test_a_refactor_goal_is_sent_as_written_whatever_braces_it_quotes(
    api: Clients, tmp_path: Path
) -> None:
    """The goal went into the Improve prompt as template text: Vue's `{{ message }}` was
    refused at the start (an unknown reference in steps[1].prompt), and `{{ item }}` or
    `{{ steps.Scan.output }}` would have been replaced by the file or the whole scan."""
    goal = (
        "Replace Vue {{ message }} interpolations with v-text; leave {{ item }}, "
        '{{ steps.Scan.output }} and {{ "{{" }} in templates alone {{{'
    )
    repo = planted_repo(tmp_path)
    project = await api.runs.create_project("p-goal")
    repository = await api.runs.add_repository(project.id, "acme", "shop", str(repo))
    # The model answers the diff only to a prompt that holds the goal as the user wrote it.
    params = {"replies": {f"Goal: {goal}.": model_replies()['"path": "calc.py"']}, "tokens": 4}
    request = runs_pb2.StartPipelineRequest(
        repository_id=repository.id, pipeline="refactor", goal=goal, params_json=json.dumps(params)
    )
    run = await api.runs.start_pipeline(request)

    await execute(api, run.id)

    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    review = json.loads((await api.runs.get_artifact(run.id, "review")).content)
    assert review["proposed"] == 3  # one answer per file: each was sent the goal as written
    assert [a["files"] for a in review["accepted"]] == [["calc.py"]], review


@pytest.mark.parametrize(
    "goal",
    [
        "Rename every {{ item }} helper",
        "Inline {{ steps.Scan.output }} and {{steps.Improve.output}}",
        'Replace Vue {{ message }} and {{ "{{" }} with v-text {{{ }}}',
    ],
)
def test_a_refactor_goal_reaches_the_model_as_written(goal: str) -> None:
    """The goal was put into the prompt as template text: a reference in it was refused or
    replaced (by the file, by the whole scan)."""
    specs = pipelines.pipeline_steps(pipelines.REFACTOR, path="/srv/repo", goal=goal)
    step_drafts(specs, {"Nemesis", "Aletheia"})
    improve = next(spec for spec in specs if spec.name == "Improve")

    sent = render(improve.prompt, {"Scan": "SCAN", "Improve": "IMPROVE"}, item="ITEM")

    assert f"Goal: {goal}.\n" in sent and sent.endswith("\n\nITEM")


async def test_a_resumed_auto_fix_reviews_against_the_commit_it_scanned(
    api: Clients, tmp_path: Path
) -> None:
    """Paused in Improve, another branch checked out, resumed: the review checked the diffs
    (written against the scanned commit) against the new HEAD and rejected them."""
    repo = planted_repo(tmp_path)
    project = await api.runs.create_project("p-resume")
    repository = await api.runs.add_repository(project.id, "acme", "shop", str(repo))
    params = {"replies": model_replies(), "tokens": 20, "token_delay_ms": 50}
    request = runs_pb2.StartPipelineRequest(
        repository_id=repository.id, pipeline="auto-fix", params_json=json.dumps(params)
    )
    run = await api.runs.start_pipeline(request)
    assert api.engine is not None
    async for event in api.engine.execute(run.id):
        if event.type == ev.STEP_STARTED and json.loads(event.data_json)["name"] == "Improve":
            await api.runs.pause_run(run.id)
    paused = await api.runs.get_run(run.id)
    assert paused.status == ev.PAUSED, paused.status
    scanned = json.loads(paused.steps[0].output)["head"]
    git(repo, "checkout", "-qb", "feature")
    (repo / "calc.py").write_text(CALC.replace("def add(a, b):", "def add(a, b):  # feature"))
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "feature")

    again = await api.runs.resume_workflow(run.workflow_id)
    await execute(api, again.id)

    done = await api.runs.get_run(again.id)
    assert done.status == ev.COMPLETED, done.error
    review = json.loads((await api.runs.get_artifact(again.id, "review")).content)
    assert [a["files"] for a in review["accepted"]] == [["calc.py"]], review["rejected"]
    assert review["head"] == scanned
    patch = (await api.runs.get_artifact(again.id, "patch")).content
    git(repo, "checkout", "-q", scanned)
    checked = subprocess.run(
        ["git", "-C", str(repo), "apply", "--check", "-"], input=patch, text=True
    )
    assert checked.returncode == 0


async def test_what_the_tests_leave_behind_is_not_in_the_patch(
    api: Clients, tmp_path: Path
) -> None:
    """Test runs write caches, bytecode and build output, and may touch tracked files: the
    patch is the accepted diffs and nothing else."""
    repo = planted_repo(tmp_path)
    litter = "echo junk > left-behind.txt && mkdir -p build && echo x > build/out && "
    command = f"sh -c '{litter}echo more >> util.py && {TEST_COMMAND}'"
    run = await start(api, repo, "auto-fix", test_command=command)
    await execute(api, run.id)

    patch = (await api.runs.get_artifact(run.id, "patch")).content
    assert files_in(patch) == ["calc.py"], patch
    review = json.loads((await api.runs.get_artifact(run.id, "review")).content)
    assert [a["files"] for a in review["accepted"]] == [["calc.py"]]


def files_in(patch: str) -> list[str]:
    return sorted(
        line.removeprefix("+++ b/") for line in patch.splitlines() if line.startswith("+++ ")
    )


async def test_a_patch_that_breaks_the_tests_is_rejected(api: Clients, tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    (repo / "test_calc.py").write_text(
        "def test_add():\n    from calc import add\n    assert add(2, 3) == -1\n"
    )
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "odd")
    run = await start(api, repo, "refactor", goal="make add correct", test_command=TEST_COMMAND)
    await execute(api, run.id)

    review = json.loads((await api.runs.get_artifact(run.id, "review")).content)
    reasons = {tuple(r["files"]): r["reason"] for r in review["rejected"]}
    assert reasons[("calc.py",)].startswith("tests failed")
    assert review["accepted"] == [] and review["patch_bytes"] == 0


async def test_a_rerun_starts_fresh_and_keeps_the_old_artifacts(
    api: Clients, tmp_path: Path
) -> None:
    repo = planted_repo(tmp_path)
    first = await start(api, repo, "auto-fix")
    await execute(api, first.id)
    old_patch = (await api.runs.get_artifact(first.id, "patch")).content

    second = await api.runs.rerun_workflow(first.workflow_id)
    assert second.id != first.id
    assert (await api.runs.get_run(second.id)).phase == "scanning"
    await execute(api, second.id)

    assert (await api.runs.get_artifact(first.id, "patch")).content == old_patch
    assert (await api.runs.get_artifact(second.id, "patch")).content == old_patch
    with pytest.raises(NotFound) as missing:
        await api.runs.get_artifact(first.id, "nothing")
    assert missing.value.field == "name"


async def test_bad_pipeline_requests_name_the_field(api: Clients, tmp_path: Path) -> None:
    project = await api.runs.create_project("bad")
    no_path = await api.runs.add_repository(project.id, "acme", "nowhere")
    cases = [
        (runs_pb2.StartPipelineRequest(repository_id=no_path.id, pipeline="lint"), "pipeline"),
        (runs_pb2.StartPipelineRequest(repository_id=no_path.id, pipeline="refactor"), "goal"),
        (runs_pb2.StartPipelineRequest(repository_id="", pipeline="auto-fix"), "repository_id"),
        (
            runs_pb2.StartPipelineRequest(
                repository_id=no_path.id, pipeline="auto-fix", max_files=-1
            ),
            "max_files",
        ),
    ]
    for request, field in cases:
        with pytest.raises((InvalidArgument, FailedPrecondition)) as refused:
            await api.runs.start_pipeline(request)
        assert refused.value.field == field, request
    with pytest.raises(FailedPrecondition) as no_tree:
        await api.runs.start_pipeline(
            runs_pb2.StartPipelineRequest(repository_id=no_path.id, pipeline="code-analysis")
        )
    assert no_tree.value.field == "path"
    assert await api.runs.list_runs() == []  # nothing half-made


def phased(name: str, phase: str, **params: object) -> pb.StepSpec:
    return pb.StepSpec(
        name=name, kind="llm", prompt="go", phase=phase, params_json=json.dumps(params)
    )


async def test_a_run_cancelled_in_a_phase_stays_in_it(api: Clients) -> None:
    """Its step is `cancelled`, which the phase did not look at: a pipeline cancelled while
    scanning said it was improving, a phase it never reached."""
    steps = [
        phased("scan", "scanning", tokens=50, token_delay_ms=100),
        phased("improve", "improving", tokens=3),
    ]
    workflow = await api.runs.create_workflow("pipeline", steps)
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    events = api.engine.execute(run.id)
    async for event in events:
        if event.type == ev.STEP_DELTA:
            break

    await api.runs.cancel_run(run.id)
    await events.aclose()

    stored = await api.runs.get_run(run.id)
    assert (stored.status, [s.status for s in stored.steps]) == (
        ev.CANCELLED,
        [ev.CANCELLED, ev.PENDING],
    )
    assert stored.phase == "scanning"
